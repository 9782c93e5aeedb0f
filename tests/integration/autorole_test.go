// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// TestRoleAutoByRTT: with no --role, each leg is tuned by its own handshake
// round trip: a 200 ms client leg starts with one 20 Mbit/s BDP (about 345
// segments) and the long legs' bbr, a 40 ms server leg with about 69
// segments and the namespace's congestion control; `--role none` keeps the
// kernel's 10 on both (the comparison that makes the first mean something).
func TestRoleAutoByRTT(t *testing.T) {
	oneWay := func(d time.Duration) linkemu.Link {
		return linkemu.Link{Down: linkemu.Dir{Delay: d}, Up: linkemu.Dir{Delay: d}}
	}
	b := newBedWith(t, defaultSuite(), testbed.Options{
		Middle:       linkemu.Middle(oneWay(100 * time.Millisecond)),
		ServerMiddle: linkemu.Middle(oneWay(20 * time.Millisecond)),
	})
	// Not bbr, so that the long legs' own is seen.
	if err := b.Router.Sysctl("net.ipv4.tcp_congestion_control", "reno"); err != nil {
		t.Fatal(err)
	}
	addr := hostPort(testbed.ServerV4, 8310)
	ln := listen(t, b.Server, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	d := b.startPepsal("--iface", testbed.RouterClientIf)
	// The first connection's SYNs wait for ARP on the emulated links, which
	// its handshake RTT would count.
	splitLegs(t, b, addr)
	base := b.status()
	baseRTO := b.daemonInfo().RTOBound
	cl, sl := splitLegs(t, b, addr)
	auto := tuning.AutoByRTT
	for _, leg := range []struct {
		name     string
		info     *report.LegInfo
		min, max time.Duration // the emulated round trip, and some slack
		cc       string
	}{
		{"client", cl, 200 * time.Millisecond, 230 * time.Millisecond, "bbr"},
		{"server", sl, 40 * time.Millisecond, 60 * time.Millisecond, "reno"},
	} {
		rtt := time.Duration(leg.info.RTTMicros) * time.Microsecond
		if rtt < leg.min || rtt > leg.max {
			t.Fatalf("%s leg RTT %s, the bed gives %s", leg.name, rtt, leg.min)
		}
		// Nothing was sent on either leg: the window is still the initial one.
		want := auto.Window(rtt, int(leg.info.SndMSS))
		if got := int(leg.info.CwndSegs); got < want-1 || got > want+1 {
			t.Errorf("%s leg (RTT %s, MSS %d): cwnd %d, want %d", leg.name, rtt, leg.info.SndMSS, got, want)
		}
		if leg.info.CC != leg.cc {
			t.Errorf("%s leg (RTT %s): %s, want %s", leg.name, rtt, leg.info.CC, leg.cc)
		}
	}
	st := b.status()
	if got := st.counter("tune_auto_iw") - base.counter("tune_auto_iw"); got != 2 {
		t.Errorf("tune_auto_iw +%d, want +2 (one per leg)", got)
	}
	if got := st.counter("tune_auto_long") - base.counter("tune_auto_long"); got != 1 {
		t.Errorf("tune_auto_long +%d, want +1 (the client leg)", got)
	}
	info := b.daemonInfo()
	if info.Role != "auto" || len(info.Presets) == 0 {
		t.Errorf("status: role %q, presets %q", info.Role, info.Presets)
	}
	// The retransmission bound (--rto-max auto) by the same round trips:
	// the 200 ms client leg is bounded, the 40 ms server leg is not.
	if rb := info.RTOBound; tuning.ProbeRTOMax() == nil && (rb == nil || baseRTO == nil || rb.Set-baseRTO.Set != 1 || rb.ShortLeg-baseRTO.ShortLeg != 1) {
		t.Errorf("rto_bound %+v, before %+v: want set +1 (client leg), short_leg +1 (server leg)", rb, baseRTO)
	}

	d.Stop(syscall.SIGTERM, 10*time.Second)
	b.startPepsal("--iface", testbed.RouterClientIf, "--role", "none")
	cl, sl = splitLegs(t, b, addr)
	if cl.CwndSegs != 10 || sl.CwndSegs != 10 || cl.CC != "reno" {
		t.Errorf("--role none: client leg cwnd %d %s, server leg cwnd %d, want the kernel's 10 and reno", cl.CwndSegs, cl.CC, sl.CwndSegs)
	}
}

// splitLegs opens a connection from the client to addr, waits until pepsal
// has both its legs, and returns what the daemon says of them. The
// connection stays open until the test ends.
func splitLegs(t *testing.T, b *bed, addr string) (client, server *report.LegInfo) {
	t.Helper()
	c := mustDial(t, b.Client, addr)
	t.Cleanup(func() { c.Close() })
	local := c.LocalAddr().(*net.TCPAddr)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, cn := range b.conns() {
			if cn.ClientLeg != nil && cn.ServerLeg != nil && cn.Client == local.String() {
				return cn.ClientLeg, cn.ServerLeg
			}
		}
	}
	t.Fatalf("no split connection from %s", local)
	return nil, nil
}
