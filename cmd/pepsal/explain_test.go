// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// TestExplainBadInput: a flow that cannot be read is one line naming what
// is wrong, before the host is touched.
func TestExplainBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"explain"}, "accepts 2 arg(s), received 0"},
		{[]string{"explain", "10.0.0.1"}, "accepts 2 arg(s), received 1"},
		{[]string{"explain", "10.0.0", "192.0.2.1:80"}, `SRC "10.0.0" is not an IP address`},
		{[]string{"explain", "10.0.0.1", "192.0.2.1"}, `DST "192.0.2.1" is not ADDR:PORT`},
		{[]string{"explain", "10.0.0.1", "192.0.2.1:0"}, `DST "192.0.2.1:0" is not ADDR:PORT`},
		{[]string{"explain", "10.0.0.1", "192.0.2.1:70000"}, `DST "192.0.2.1:70000" is not ADDR:PORT`},
		{[]string{"explain", "10.0.0.1", "2001:db8::1:80"}, `DST "2001:db8::1:80" is not ADDR:PORT`},
		{[]string{"explain", "10.0.0.1", "[2001:db8::1]:80"}, "SRC 10.0.0.1 and DST 2001:db8::1 are of different families"},
		{[]string{"explain", "--syn-data=maybe", "10.0.0.1", "192.0.2.1:80"}, `invalid argument "maybe" for "--syn-data"`},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			usageLine(t, pepsal(t, untouchable(t), c.args...), c.want)
		})
	}
}

// TestExplainNotAttached: with nothing attached there is no classifier to
// replay: one line says so.
func TestExplainNotAttached(t *testing.T) {
	e := untouchable(t)
	e.privileged = func() error { return nil }
	e.openAttachment = func() (*loader.Attachment, error) { return nil, loader.ErrNotAttached }
	oneLine(t, pepsal(t, e, "explain", "10.0.0.1", "192.0.2.1:80"), "read the classifier's maps: pepsal is not attached")
}
