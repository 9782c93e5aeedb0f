// SPDX-License-Identifier: Apache-2.0

package report_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/report"
)

// answerError is what a daemon's answer says as an error: the text of its
// "error" member (the name matched as encoding/json matches a field's,
// whatever its case), and whether it has one that is not null.
func answerError(raw json.RawMessage) (text string, isError bool) {
	var members map[string]json.RawMessage
	if json.Unmarshal(raw, &members) != nil {
		return "", false
	}
	var texts []string
	for name, v := range members {
		if !strings.EqualFold(name, "error") || string(v) == "null" {
			continue
		}
		isError = true
		var s string
		if json.Unmarshal(v, &s) == nil {
			texts = append(texts, s)
		}
	}
	if len(texts) == 1 && len(members) == 1 {
		text = texts[0]
	}
	return text, isError
}

// FuzzExchange drives the client's side of the control socket with what
// a daemon may answer. Exchange sends the request as one line; it fails
// unless the answer's first JSON value decodes into the report, and then
// gives what encoding/json gives; an answer with an "error" member is an
// error (with its text when it is the only member), never an empty report.
func FuzzExchange(f *testing.F) {
	for _, answer := range []string{`{"pid":1,"version":"v","stats":{"accepted":3}}` + "\n", `[{"id":1,"client":"10.0.0.1:1"}]`,
		`{"error":"permission denied: pepsal's control socket needs root"}` + "\n", `{"error":null,"pid":2}`, `{"ERROR":"x"}`,
		`{"error":5}`, `{"error":"a","error":1}`, `null`, `[]`, `{"pid":"one"}`, ``, `{`, `{"pid":1} trailing`, `"error"`} {
		f.Add([]byte(answer), false)
		f.Add([]byte(answer), true)
	}
	f.Fuzz(func(t *testing.T, answer []byte, conns bool) {
		request, out, fresh := "info", any(&report.DaemonInfo{}), any(&report.DaemonInfo{})
		if conns {
			request, out, fresh = "conns", any(&[]report.ConnInfo{}), any(&[]report.ConnInfo{})
		}
		c := &nettest.MemConn{In: answer}
		err := report.Exchange(c, request, out)
		if c.Out.String() != request+"\n" {
			t.Fatalf("sent %q for %q", c.Out.String(), request)
		}
		var raw json.RawMessage
		if derr := json.NewDecoder(bytes.NewReader(answer)).Decode(&raw); derr != nil {
			if err == nil {
				t.Fatalf("answer %q is no JSON value (%v), yet Exchange succeeded", answer, derr)
			}
			return
		}
		text, isError := answerError(raw)
		decodes := json.Unmarshal(raw, fresh) == nil
		switch {
		case isError && err == nil:
			t.Fatalf("error answer %q decoded as a report: %+v", raw, out)
		case isError && text != "" && err.Error() != text:
			t.Fatalf("error answer %q said as %q", raw, err)
		case isError || err != nil && !decodes:
			return
		case err != nil:
			t.Fatalf("answer %q decodes, yet Exchange failed: %v", raw, err)
		}
		if !reflect.DeepEqual(out, fresh) {
			t.Fatalf("answer %q gave %+v, encoding/json %+v", raw, out, fresh)
		}
	})
}
