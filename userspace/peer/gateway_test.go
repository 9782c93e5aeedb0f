// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"net/netip"
	"testing"
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
