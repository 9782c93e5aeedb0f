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
		{tuning.Auto.Tuning(), []string{
			"client leg: bbr if its handshake RTT is 150ms or more, initcwnd one BDP of 20 Mbit/s at its handshake RTT (10-1000 segments), rto-max 4x the handshake RTT within 2s-120s on a leg of 150ms or more",
			"server leg: bbr if its handshake RTT is 150ms or more, initcwnd one BDP of 20 Mbit/s at its handshake RTT (10-1000 segments), rto-max 4x the handshake RTT within 2s-120s on a leg of 150ms or more",
			"fast open: off"}},
		{tuning.Gateway.Tuning(), []string{
			"client leg: bbr, initcwnd 1000, initrwnd 2048, sndbuf 16MiB, rcvbuf 16MiB, quickack, rto-max 4x the handshake RTT within 2s-120s",
			"server leg: Linux defaults", "fast open: accepted"}},
		{tuning.Tuning{Server: tuning.Leg{RTOMax: tuning.RTOMax{Fixed: 3 * time.Second, GiveUp: 924600 * time.Millisecond}}}, []string{
			"client leg: Linux defaults",
			"server leg: rto-max 3s, user timeout 15m24.6s (--user-timeout 0: the kernel's give-up time without the bound)", "fast open: off"}},
		{tuning.Tuning{Client: tuning.Leg{CC: "cubic", InitCwnd: 30}, ByRTT: tuning.AutoByRTT}, []string{
			"client leg: cubic, initcwnd 30",
			"server leg: bbr if its handshake RTT is 150ms or more, initcwnd one BDP of 20 Mbit/s at its handshake RTT (10-1000 segments)",
			"fast open: off"}},
	} {
		if got := Presets(c.t); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Presets = %q, want %q", got, c.want)
		}
	}
}

// TestLegTuning: what the sock_ops program is given for a leg: the leg's
// own window and congestion control win over the ones by round trip.
func TestLegTuning(t *testing.T) {
	lt := legTuning(tuning.Leg{}, tuning.AutoByRTT, false)
	if lt.InitCwnd != 0 || lt.AutoRate != 2500 || lt.AutoMin != 10 || lt.AutoMax != 1000 || lt.AutoLongUs != 150000 || lt.LongCc[0] != 'b' || lt.LongCc[3] != 0 {
		t.Errorf("auto leg: %+v", lt)
	}
	own := legTuning(tuning.Leg{CC: "cubic", InitCwnd: 40, InitRwnd: 50}, tuning.AutoByRTT, false)
	if own.InitCwnd != 40 || own.InitRwnd != 50 || own.LongCc[0] != 0 || own.AutoRate != 2500 {
		t.Errorf("leg with its own settings: %+v", own)
	}
	if off := legTuning(tuning.Leg{InitCwnd: 7}, tuning.ByRTT{}, false); off.AutoRate != 0 || off.LongCc[0] != 0 || off.InitCwnd != 7 {
		t.Errorf("no auto: %+v", off)
	}
	long := tuning.AutoByRTT
	long.LongCC = "a-name-longer-than-fifteen"
	if lt := legTuning(tuning.Leg{}, long, false); lt.LongCc[15] != 0 {
		t.Errorf("a long name must leave the C string terminated: %v", lt.LongCc)
	}
}
