// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the calling goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestCounterUnknownNameFails: a counter name the status does not report
// (renamed in bpf/pepsal.h, misspelled in a test) fails the test instead of
// reading as zero, which would let `counter("x") == 0` pass silently.
func TestCounterUnknownNameFails(t *testing.T) {
	lookup := func(name string) (uint64, string) {
		rec := &fatalRecorder{TB: t}
		s := status{report.StatusReport{Counters: []loader.Counter{{Name: "syn_diverted", Value: 3}, {Name: "pkt_unparsed"}}}, rec}
		var v uint64
		done := make(chan struct{})
		go func() {
			defer close(done)
			v = s.counter(name)
		}()
		<-done
		return v, rec.msg
	}
	if v, msg := lookup("syn_diverted"); v != 3 || msg != "" {
		t.Errorf("syn_diverted: %d %q, want 3 and no failure", v, msg)
	}
	if v, msg := lookup("pkt_unparsed"); v != 0 || msg != "" {
		t.Errorf("pkt_unparsed: %d %q, want 0 and no failure", v, msg)
	}
	if _, msg := lookup("syn_divreted"); !strings.Contains(msg, `no counter "syn_divreted"`) {
		t.Errorf("misspelled counter: failure %q, want one that names it", msg)
	}
}
