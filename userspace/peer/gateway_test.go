// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"net/netip"
	"testing"

	"github.com/pepsal/pepsal/userspace/report"
)

// TestGatewayAllow: --peer-allow in either form, IPv4 or IPv4-mapped
// (::ffff:10.0.0.0/104 is 10.0.0.0/8), admits a terminal whose address
// comes either way; an IPv6 prefix admits no IPv4 terminal.
func TestGatewayAllow(t *testing.T) {
	for _, c := range []struct {
		allow   []string
		in, out []string
	}{
		{nil, []string{"10.1.2.3", "2001:db8::1", "::ffff:10.1.2.3"}, nil},
		{[]string{"10.0.0.0/8"}, []string{"10.1.2.3", "::ffff:10.1.2.3"}, []string{"11.0.0.1", "2001:db8::1", "::a01:203"}},
		{[]string{"::ffff:10.0.0.0/104"}, []string{"10.1.2.3", "::ffff:10.1.2.3"}, []string{"11.0.0.1", "::ffff:11.0.0.1", "2001:db8::1"}},
		{[]string{"::ffff:192.0.2.7/128"}, []string{"192.0.2.7"}, []string{"192.0.2.8"}},
		{[]string{"::ffff:0:0/96"}, []string{"10.1.2.3", "192.0.2.7"}, []string{"2001:db8::1", "::1"}},
		{[]string{"2001:db8::/32"}, []string{"2001:db8::1"}, []string{"10.1.2.3", "2001:db9::1"}},
		{[]string{"::/0"}, []string{"2001:db8::1"}, []string{"10.1.2.3", "::ffff:10.1.2.3"}},
		{[]string{"2001:db8::/32", "::ffff:10.0.0.0/104"}, []string{"2001:db8::1", "10.9.9.9"}, []string{"11.0.0.1"}},
	} {
		g := &Gateway{}
		for _, p := range c.allow {
			g.Allow = append(g.Allow, netip.MustParsePrefix(p))
		}
		for _, a := range c.in {
			if !g.allowed(netip.MustParseAddr(a)) {
				t.Errorf("allow %v refuses %s", c.allow, a)
			}
		}
		for _, a := range c.out {
			if g.allowed(netip.MustParseAddr(a)) {
				t.Errorf("allow %v admits %s", c.allow, a)
			}
		}
	}
}

// TestGatewayAdmit: at accept, a source not allowed, a full admission
// limit, MaxWaiting held connections and PerSourceMax authenticating ones
// of one source (an IPv4 address, an IPv6 /64) each refuse a new
// connection under its reason; a connection that authenticated no longer
// counts against its source, and one released no longer against MaxWaiting.
func TestGatewayAdmit(t *testing.T) {
	g := &Gateway{MaxWaiting: PerSourceMax + 2, sources: map[netip.Addr]int{}, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}}
	mustAdmit := func(src string, full bool, want string) {
		t.Helper()
		if reason, _ := g.admit(full, netip.MustParseAddr(src)); reason != want {
			t.Fatalf("admit %s (full %v): %q, want %q", src, full, reason, want)
		}
	}
	mustAdmit("192.0.2.1", false, report.AuthNotAllowed)
	mustAdmit("10.0.0.1", true, report.AuthFull)
	for range PerSourceMax {
		mustAdmit("10.0.0.1", false, "")
	}
	mustAdmit("10.0.0.1", false, report.AuthPerSource)
	mustAdmit("::ffff:10.0.0.1", false, report.AuthPerSource) // the same source, mapped
	mustAdmit("10.0.0.2", false, "")
	// One /64 is one source: another address in it is refused too.
	g.authenticated(netip.MustParseAddr("10.0.0.2"))
	g.release()
	for range PerSourceMax - g.waiting + 2 {
		mustAdmit("2001:db8:0:1::1", false, "")
	}
	mustAdmit("2001:db8:0:1::2", false, report.AuthOverload)
	// Authenticated: its source may start another, MaxWaiting still counts it.
	g.authenticated(netip.MustParseAddr("10.0.0.1"))
	mustAdmit("10.0.0.1", false, report.AuthOverload)
	g.release()
	mustAdmit("10.0.0.1", false, "")
	if g.authenticating != g.waiting || g.sources[netip.MustParseAddr("10.0.0.1")] != PerSourceMax {
		t.Errorf("authenticating %d, waiting %d, per source %v", g.authenticating, g.waiting, g.sources)
	}
}
