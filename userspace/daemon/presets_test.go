// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"reflect"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/tuning"
)

// TestPresets: what status says of the legs: Linux's defaults, a long
// leg as the gateway role presets it, a leg the flags changed.
func TestPresets(t *testing.T) {
	off := false
	custom := tuning.Tuning{Server: tuning.Leg{CC: "cubic", SndBuf: 512 << 10, RcvBuf: 1000, MSS: 1400, NoDelay: &off},
		FastOpen: tuning.FastOpen{Dial: true, Wait: 20 * time.Millisecond}}
	long := tuning.Tuning{Client: tuning.Leg{CC: "bbr", InitCwnd: 1000, InitRwnd: 2048, SndBuf: 16 << 20, RcvBuf: 16 << 20, QuickAck: true},
		FastOpen: tuning.FastOpen{Accept: true}}
	for _, c := range []struct {
		t    tuning.Tuning
		want []string
	}{
		{tuning.Tuning{}, []string{"client leg: Linux defaults", "server leg: Linux defaults", "fast open: off"}},
		{long, []string{"client leg: bbr, initcwnd 1000, initrwnd 2048, sndbuf 16MiB, rcvbuf 16MiB, quickack",
			"server leg: Linux defaults", "fast open: accepted"}},
		{custom, []string{"client leg: Linux defaults", "server leg: cubic, sndbuf 512KiB, rcvbuf 1000, mss 1400, nodelay off",
			"fast open: dialed (waits 20ms for the request)"}},
	} {
		if got := Presets(c.t); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Presets = %q, want %q", got, c.want)
		}
	}
}
