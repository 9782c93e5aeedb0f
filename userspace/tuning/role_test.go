// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestRoleText: the roles read back from the texts --role takes; anything
// else is ErrBadRole and changes nothing.
func TestRoleText(t *testing.T) {
	for _, r := range []Role{NoRole, Gateway, Terminal, Auto} {
		back := Role(9)
		if err := back.UnmarshalText([]byte(r.String())); err != nil || back != r {
			t.Errorf("%q reads back as %v (%v)", r, back, err)
		}
	}
	r := Gateway
	if err := r.UnmarshalText([]byte("satellite")); !errors.Is(err, ErrBadRole) || r != Gateway {
		t.Errorf("satellite: %v, role now %q", err, r)
	}
	if Gateway.Tuning().Client.CC != "bbr" || Terminal.Tuning().Server.CC != "bbr" || !reflect.DeepEqual(NoRole.Tuning(), Tuning{}) {
		t.Error("presets lost their long leg")
	}
	if err := r.UnmarshalText(nil); !errors.Is(err, ErrBadRole) {
		t.Errorf("an empty role: %v", err)
	}
	if a := Auto.Tuning(); !a.ByRTT.On() || a.Client.InitCwnd != 0 || a.Server.CC != "" || a.FastOpen.Accept || a.FastOpen.Dial {
		t.Errorf("auto: %+v", a)
	}
}

// TestWindowByRTT: one BDP of 20 Mbit/s at the leg's round trip, within
// the preset's bounds: GEO as the gateway preset, LEO in between, a LAN
// as the kernel.
func TestWindowByRTT(t *testing.T) {
	b := AutoByRTT
	for _, c := range []struct {
		rtt  time.Duration
		mss  int
		want int
	}{
		{600 * time.Millisecond, 1448, 1000}, // 1.5 MB: capped
		{500 * time.Millisecond, 1448, 863},
		{40 * time.Millisecond, 1448, 69},
		{40 * time.Millisecond, 1388, 72},
		{2 * time.Millisecond, 1448, 10},
		{0, 1448, 0},
		{40 * time.Millisecond, 0, 0},
	} {
		if got := b.Window(c.rtt, c.mss); got != c.want {
			t.Errorf("Window(%s, %d) = %d, want %d", c.rtt, c.mss, got, c.want)
		}
	}
	if (ByRTT{}).Window(time.Second, 1448) != 0 {
		t.Error("off gives a window")
	}
}
