// SPDX-License-Identifier: Apache-2.0

package explain

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// open is a classifier state that splits a flow from 10.0.0.2 on ifindex
// 3 to 203.0.113.7:80 or [2001:db8::7]:80.
func open() loader.ClassifierState {
	return loader.ClassifierState{
		Ports:      []uint16{80, 443},
		Ifaces:     []loader.Iface{{Index: 3, Name: "lan0"}, {Index: 4, Name: "wan0", ReturnOnly: true}},
		ListenerV4: true, ListenerV6: true,
		Exclude: []netip.Prefix{netip.MustParsePrefix("::ffff:198.51.100.0/120"), netip.MustParsePrefix("2001:db8:dead::/48")},
	}
}

func flow() Flow {
	return Flow{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddrPort("203.0.113.7:80"), Ingress: 3, Name: "lan0"}
}

// TestDecide: each of divert_syn's decisions, its counter, and its place
// in classify.c's order (a flow that two checks would stop is stopped by
// the earlier one).
func TestDecide(t *testing.T) {
	for _, c := range []struct {
		name    string
		state   func(*loader.ClassifierState)
		flow    func(*Flow)
		split   bool
		counter string
		why     string
	}{
		{"split", nil, nil, true, "syn_diverted", "split"},
		{"split v6", nil, func(f *Flow) {
			f.Src, f.Dst = netip.MustParseAddr("fd00::2"), netip.MustParseAddrPort("[2001:db8::7]:443")
		}, true, "syn_diverted", "split"},
		{"all ports", func(s *loader.ClassifierState) { s.AllPorts, s.Ports = true, nil }, func(f *Flow) {
			f.Dst = netip.MustParseAddrPort("203.0.113.7:22")
		}, true, "syn_diverted", ""},
		{"own host", nil, func(f *Flow) { f.Ingress = 0 }, false, "", "this host"},
		{"no classifier there", nil, func(f *Flow) { f.Ingress, f.Name = 9, "eth9" }, false, "", "eth9, which has no pepsal classifier"},
		{"return-only before port", nil, func(f *Flow) {
			f.Ingress, f.Name, f.Dst = 4, "wan0", netip.MustParseAddrPort("203.0.113.7:22")
		}, false, "syn_bypass_return_iface", "return-only"},
		{"port before excluded", nil, func(f *Flow) { f.Dst = netip.MustParseAddrPort("198.51.100.9:22") }, false, "syn_bypass_port", "port 22"},
		{"excluded v4", nil, func(f *Flow) { f.Dst = netip.MustParseAddrPort("198.51.100.9:80") }, false, "syn_bypass_excluded", "198.51.100.0/24"},
		{"excluded v6", nil, func(f *Flow) {
			f.Src, f.Dst = netip.MustParseAddr("fd00::2"), netip.MustParseAddrPort("[2001:db8:dead::1]:80")
		}, false, "syn_bypass_excluded", "2001:db8:dead::/48"},
		{"excluded before local", nil, func(f *Flow) {
			f.Dst, f.Route = netip.MustParseAddrPort("198.51.100.9:80"), RouteLocal
		}, false, "syn_bypass_excluded", ""},
		{"local", nil, func(f *Flow) { f.Route = RouteLocal }, false, "syn_bypass_local", "router itself"},
		{"unroutable before listener", func(s *loader.ClassifierState) { s.ListenerV4 = false }, func(f *Flow) { f.Route = RouteUnroutable },
			false, "syn_bypass_unroutable", "no route"},
		{"no v4 listener", func(s *loader.ClassifierState) { s.ListenerV4 = false }, nil, false, "syn_bypass_no_listener", "listener"},
		{"v4 listener serves no v6", func(s *loader.ClassifierState) { s.ListenerV6 = false }, func(f *Flow) {
			f.Src, f.Dst = netip.MustParseAddr("fd00::2"), netip.MustParseAddrPort("[2001:db8::7]:80")
		}, false, "syn_bypass_no_listener", ""},
		{"syn data untrusted before full", func(s *loader.ClassifierState) { s.SynDataCheck, s.Full = true, true }, func(f *Flow) { f.SynData = true },
			false, "syn_data_untrusted", "--fastopen-from"},
		{"syn data trusted", func(s *loader.ClassifierState) {
			s.SynDataCheck, s.FastOpenFrom = true, []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
		}, func(f *Flow) { f.SynData = true }, true, "syn_diverted", ""},
		{"syn data unchecked", nil, func(f *Flow) { f.SynData = true }, true, "syn_diverted", ""},
		{"full before source", func(s *loader.ClassifierState) {
			s.Full, s.SourcesFull = true, []netip.Addr{netip.MustParseAddr("10.0.0.2")}
		}, nil, false, "syn_bypass_full", "--max-conns"},
		{"source full", func(s *loader.ClassifierState) { s.SourcesFull = []netip.Addr{netip.MustParseAddr("10.0.0.2")} }, nil,
			false, "syn_bypass_source", "--max-conns-per-client"},
		{"other source full", func(s *loader.ClassifierState) { s.SourcesFull = []netip.Addr{netip.MustParseAddr("10.0.0.3")} }, nil,
			true, "syn_diverted", ""},
		{"denied by the daemon", nil, func(f *Flow) { f.Denied = "deny_prefix" }, false, "syn_diverted", "destination policy (deny_prefix)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, f := open(), flow()
			if c.state != nil {
				c.state(&s)
			}
			if c.flow != nil {
				c.flow(&f)
			}
			v := Decide(s, f)
			if v.Split != c.split || v.Counter != c.counter || !strings.Contains(v.Why, c.why) {
				t.Errorf("%+v: want split %v, counter %q, why with %q", v, c.split, c.counter, c.why)
			}
			if (f.Denied != "") != (v.DeniedReason != "") {
				t.Errorf("denied reason %q for a flow denied %q", v.DeniedReason, f.Denied)
			}
		})
	}
}

// TestReadable: stored keys shown as written.
func TestReadable(t *testing.T) {
	for in, want := range map[string]string{"::ffff:10.0.0.0/104": "10.0.0.0/8", "::ffff:10.1.2.3/128": "10.1.2.3/32", "2001:db8::/32": "2001:db8::/32", "::/1": "::/1"} {
		if got := Readable(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("Readable(%s) = %s, want %s", in, got, want)
		}
	}
}
