// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// TestParseRTOMax: auto, off, 0 or a duration within the kernel's range.
func TestParseRTOMax(t *testing.T) {
	for text, want := range map[string]RTOMax{
		"auto": {Auto: true}, "AUTO": {Auto: true}, "off": {}, "0": {},
		"1s": {Fixed: time.Second}, "2.5s": {Fixed: 2500 * time.Millisecond}, "120s": {Fixed: 120 * time.Second},
	} {
		if got, err := ParseRTOMax(text); err != nil || got != want {
			t.Errorf("%q: %+v, %v; want %+v", text, got, err, want)
		}
	}
	for _, text := range []string{"999ms", "121s", "-1s", "0s5", "soon", ""} {
		if _, err := ParseRTOMax(text); !errors.Is(err, ErrBadRTOMax) {
			t.Errorf("%q: %v, want ErrBadRTOMax", text, err)
		}
	}
}

// TestRTOMaxFor: the derived bound stays above the loaded RTT a long leg
// sees (1.18 s on GEO with a full queue), fixed bounds are what was asked,
// and with --role auto short or unmeasured legs are left alone.
func TestRTOMaxFor(t *testing.T) {
	ms := time.Millisecond
	auto, byRTT, fixed := RTOMax{Auto: true}, RTOMax{Auto: true, LongRTT: 150 * ms}, RTOMax{Fixed: 3 * time.Second}
	for _, c := range []struct {
		m    RTOMax
		rtt  time.Duration
		want time.Duration
	}{
		{auto, 600 * ms, 2400 * ms},
		{auto, 1180 * ms, 4720 * ms},
		{auto, 40 * ms, 2 * time.Second},
		{auto, 0, 2400 * ms}, // a long leg not measured yet: GEO assumed
		{auto, 45 * time.Second, 120 * time.Second},
		{auto, 600*ms + 1234, 2400 * ms}, // whole milliseconds
		{byRTT, 149 * ms, 0},
		{byRTT, 0, 0},
		{byRTT, 150 * ms, 2 * time.Second},
		{byRTT, 700 * ms, 2800 * ms},
		{fixed, 700 * ms, 3 * time.Second},
		{RTOMax{Fixed: time.Second, LongRTT: 150 * ms}, 20 * ms, 0},
		{RTOMax{}, 600 * ms, 0},
	} {
		if got := c.m.For(c.rtt); got != c.want {
			t.Errorf("%+v.For(%s) = %s, want %s", c.m, c.rtt, got, c.want)
		}
	}
}

// TestKernelGiveUp mirrors tcp_model_timeout() at TCP_RTO_MIN and the
// kernel's 120 s bound: 924.6 s at the default tcp_retries2.
func TestKernelGiveUp(t *testing.T) {
	for retries, want := range map[int]time.Duration{15: 924600 * time.Millisecond, 9: 204600 * time.Millisecond, 5: 12600 * time.Millisecond, 0: 200 * time.Millisecond, 10: 324600 * time.Millisecond, -1: 0} {
		if got := KernelGiveUp(retries); got != want {
			t.Errorf("KernelGiveUp(%d) = %s, want %s", retries, got, want)
		}
	}
}

// TestRTOMaxNeedsUserTimeout: a bounded leg without a user timeout would
// die after ~14 s of outage on 6.15+: refused unless GiveUp stands in.
func TestRTOMaxNeedsUserTimeout(t *testing.T) {
	var le *LegError
	if err := (Leg{RTOMax: RTOMax{Auto: true}}).Validate("server"); !errors.As(err, &le) || le.Field != "rto-max" {
		t.Errorf("no user timeout: %v", err)
	}
	for _, l := range []Leg{{RTOMax: RTOMax{Auto: true}, UserTimeout: time.Minute}, {RTOMax: RTOMax{Fixed: time.Second, GiveUp: time.Hour}}, {}} {
		if err := l.Validate("server"); err != nil {
			t.Errorf("%+v: %v", l, err)
		}
	}
	if err := (Leg{RTOMax: RTOMax{Fixed: 500 * time.Millisecond}, UserTimeout: time.Minute}).Validate("client"); !errors.As(err, &le) || le.Field != "rto-max" {
		t.Errorf("500ms: %v", err)
	}
}

// TestRTOMaxOnSocket: Established puts the bound (and the give-up time
// standing in for --user-timeout 0) on a real socket; a short leg with
// --role auto keeps the kernel's; each decision is counted.
func TestRTOMaxOnSocket(t *testing.T) {
	if err := ProbeRTOMax(); err != nil {
		t.Skip(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	read := func(c *net.TCPConn, opt int) int {
		var v int
		if err := sockopt.WithFD(c, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_TCP, opt); return }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	stats := &RTOStats{}
	for _, c := range []struct {
		leg         Leg
		rtoMax, uto int
	}{
		{Leg{RTOMax: RTOMax{Fixed: 3 * time.Second, Stats: stats}, UserTimeout: time.Minute}, 3000, 60000},
		// Loopback's handshake RTT (microseconds): the floor.
		{Leg{RTOMax: RTOMax{Auto: true, GiveUp: 924600 * time.Millisecond, Stats: stats}}, 2000, 924600},
		{Leg{RTOMax: RTOMax{Auto: true, LongRTT: 150 * time.Millisecond, Stats: stats}, UserTimeout: time.Minute}, 120000, 60000},
		// Neither a user timeout nor GiveUp (Validate refuses it): the
		// kernel's old give-up time all the same.
		{Leg{RTOMax: RTOMax{Fixed: 5 * time.Second, Stats: stats}}, 5000, 924600},
	} {
		d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.leg.Established(d); err != nil {
			t.Error(err)
		}
		got, uto := read(d, unix.TCP_RTO_MAX_MS), read(d, unix.TCP_USER_TIMEOUT)
		d.Close()
		if got != c.rtoMax || uto != c.uto {
			t.Errorf("%+v: TCP_RTO_MAX_MS %d, TCP_USER_TIMEOUT %d; want %d, %d", c.leg.RTOMax, got, uto, c.rtoMax, c.uto)
		}
	}
	if stats.Set.Load() != 3 || stats.Short.Load() != 1 || stats.Failed.Load() != 0 {
		t.Errorf("set %d, short %d, failed %d; want 3, 1, 0", stats.Set.Load(), stats.Short.Load(), stats.Failed.Load())
	}
}
