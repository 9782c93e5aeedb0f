// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/pepsal/pepsal/tests/testbed"
	"golang.org/x/sys/unix"
)

// testFamily is what the cases of one address family need.
type testFamily struct {
	name        string
	syn         pkt    // a SYN that opens a flow to an intercepted port
	network, lo string // the loopback of this family, to listen and dial on
	slot, other uint32 // pepsal_listen slots: this family's and the other's
}

// pick is v4 or v6, by the family.
func (f testFamily) pick(v4, v6 netip.Addr) netip.Addr {
	if f.name == "v6" {
		return v6
	}
	return v4
}

var (
	v4syn = pkt{src: clientV4, dst: serverV4, sport: 40000, dport: 80, flags: tcpSYN, tos: 0xb8}
	v6syn = pkt{src: clientV6, dst: serverV6, sport: 40000, dport: 443, flags: tcpSYN, tos: 0x28}

	testFamilies = []testFamily{
		{"v4", v4syn, "tcp4", "127.0.0.1:0", ListenerV4, ListenerV6},
		{"v6", v6syn, "tcp6", "[::1]:0", ListenerV6, ListenerV4},
	}
)

// newClassifyEnv loads the classifier in a namespace of its own, made a
// small router, with ports 80 and 443 intercepted.
func newClassifyEnv(t *testing.T) *classifyEnv {
	ns := testbed.NewTestNS(t, "loader-classify")
	ns.EnterForTest(t)
	ingress := setupRouterNS(t)
	spec, err := loadClassify()
	if err != nil {
		t.Fatal(err)
	}
	coll := loadForTest(t, spec, nil)
	e := &classifyEnv{ns: ns, ingress: ingress, coll: coll,
		counters: &counterSet{m: coll.Maps["pepsal_counters"], asserted: map[string]bool{}}}
	e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark})
	for _, port := range []uint16{80, 443} {
		e.put(t, "pepsal_ports", port, uint8(1))
	}
	return e
}

// TestClassify: every decision of the classifier, on ordinary and on
// hostile packets, by the counter it bumps and the mark it leaves.
func TestClassify(t *testing.T) {
	needBPF(t)
	checkCtxSize(t, "__sk_buff", skBuff{})
	e := newClassifyEnv(t)
	for _, f := range testFamilies {
		flowCases(t, e, f)
		synCases(t, e, f)
		synPolicyCases(t, e, f)
		synDataCases(t, e, f)
		sourceLimitCases(t, e, f)
		hostileCases(t, e, f)
		icmpCases(t, e, f)
	}
	lengthCases(t, e)
	wireCases(t, e)
	cookieTests(t, e)

	// Neither IPv4 nor IPv6.
	arp := v4syn.bytes()
	binary.BigEndian.PutUint16(arp[12:], unix.ETH_P_ARP)
	e.check(t, tcase{name: "arp", raw: arp, want: one("pkt_not_tcp")})
	e.check(t, tcase{name: "ethernet_header_only", raw: arp[:14], want: one("pkt_not_tcp")})
	noConfigCase(t, e)

	if !t.Failed() {
		e.counters.coverage(t, "syn_", "pkt_", "icmp_", "ack_", "rst_", "cookie_")
	}
}

// flowCases: packets of existing flows follow their socket.
func flowCases(t *testing.T, e *classifyEnv, f testFamily) {
	ack := f.syn
	ack.flags = tcpACK
	udp := f.syn
	udp.proto = unix.IPPROTO_UDP
	e.check(t, tcase{name: f.name + "/udp", p: udp, want: one("pkt_not_tcp")})
	e.check(t, tcase{name: f.name + "/ack_no_socket_forwarded", p: ack, want: one("pkt_forwarded")})
	rst := f.syn
	rst.flags = tcpRST
	e.check(t, tcase{name: f.name + "/rst_no_socket_forwarded", p: rst, want: one("pkt_forwarded")})

	e.check(t, tcase{name: f.name + "/ack_local_socket", p: ack, want: one("pkt_local_socket"), mark: true,
		setup: func(t *testing.T, p *pkt) {
			c := dialPair(t, f.network, f.lo)
			// As the dialer's packets arrive at the accepted socket.
			from, to := addrPort(c.c.LocalAddr()), addrPort(c.c.RemoteAddr())
			p.src, p.sport, p.dst, p.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
		}})
	e.check(t, tcase{name: f.name + "/fin_time_wait_forwarded", p: pkt{flags: tcpFIN | tcpACK}, want: one("pkt_timewait_forwarded"),
		setup: func(t *testing.T, p *pkt) {
			c := dialPair(t, f.network, f.lo)
			from, to := addrPort(c.s.LocalAddr()), addrPort(c.s.RemoteAddr())
			timeWait(t, c)
			// The acceptor's side again: only the dialer's TIME_WAIT socket matches.
			p.src, p.sport, p.dst, p.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
		}})
	e.check(t, tcase{name: f.name + "/ack_to_listener_forwarded", p: ack, want: one("pkt_forwarded"),
		setup: func(t *testing.T, p *pkt) {
			// A listener matches any flow to its port: it does not make one local.
			to := addrPort(listenTCP(t, f.network, f.lo).Addr())
			p.src, p.dst, p.dport = to.Addr(), to.Addr(), to.Port()
		}})
}

// synCases: first SYNs, every reason not to divert up to the route, in the
// classifier's order.
func synCases(t *testing.T, e *classifyEnv, f testFamily) {
	syn := f.syn
	e.check(t, tcase{name: f.name + "/syn_return_iface", p: syn, want: one("syn_bypass_return_iface"),
		setup: func(t *testing.T, p *pkt) {
			e.put(t, "pepsal_ifaces", uint32(e.ingress), classifyIfaceState{ReturnOnly: 1})
			t.Cleanup(func() { e.del(t, "pepsal_ifaces", uint32(e.ingress)) })
		}})
	noPort := syn
	noPort.dport = 22
	e.check(t, tcase{name: f.name + "/syn_port_not_intercepted", p: noPort, want: one("syn_bypass_port")})
	e.check(t, tcase{name: f.name + "/syn_excluded", p: syn, want: one("syn_bypass_excluded"),
		setup: func(t *testing.T, p *pkt) {
			excludeForTest(t, e, netip.PrefixFrom(p.dst, p.dst.BitLen()-8))
		}})
	// An IPv6 prefix excludes IPv6 destinations only, even ::/0, which
	// as one LPM key would cover the v4-mapped IPv4 ones; an IPv4
	// prefix, even 0.0.0.0/0, only IPv4 ones.
	otherFamily, sameFamily := "0.0.0.0/0", "::/0"
	if f.name == "v4" {
		otherFamily, sameFamily = sameFamily, otherFamily
	}
	e.check(t, tcase{name: f.name + "/syn_not_excluded_by_" + otherFamily, p: syn, want: one("syn_bypass_no_listener"),
		setup: func(t *testing.T, p *pkt) { excludeForTest(t, e, netip.MustParsePrefix(otherFamily)) }})
	e.check(t, tcase{name: f.name + "/syn_excluded_by_" + sameFamily, p: syn, want: one("syn_bypass_excluded"),
		setup: func(t *testing.T, p *pkt) { excludeForTest(t, e, netip.MustParsePrefix(sameFamily)) }})
	local := syn
	local.dst = f.pick(ingressV4.Addr(), ingressV6.Addr())
	e.check(t, tcase{name: f.name + "/syn_to_router_itself", p: local, want: one("syn_bypass_local")})
	for _, r := range rejectRoutes {
		rej := syn
		rej.dst = f.pick(r.v4, r.v6)
		e.check(t, tcase{name: f.name + "/syn_" + r.name + "_route", p: rej, want: one("syn_bypass_unroutable")})
	}
	// No route at all: the kernel drops it (net unreachable), it is not
	// for the router itself.
	noRoute := syn
	noRoute.dst = f.pick(noRouteV4, noRouteV6)
	e.check(t, tcase{name: f.name + "/syn_no_route", p: noRoute, want: one("syn_bypass_unroutable")})
	e.check(t, tcase{name: f.name + "/syn_no_listener", p: syn, want: one("syn_bypass_no_listener")})
}

// withListener registers a listener of f's family, as the daemon does.
func (e *classifyEnv) withListener(f testFamily) func(t *testing.T, _ *pkt) {
	return func(t *testing.T, _ *pkt) {
		registerListener(t, e.coll.Maps["pepsal_listen"], f.slot, listenTCP(t, f.network, f.lo))
	}
}

// synPolicyCases: first SYNs past the route: listener, admission, diversion.
func synPolicyCases(t *testing.T, e *classifyEnv, f testFamily) {
	syn := f.syn
	e.check(t, tcase{name: f.name + "/syn_other_family_listener_only", p: syn, want: one("syn_bypass_no_listener"),
		setup: func(t *testing.T, p *pkt) {
			other := testFamilies[0]
			if f.name == "v4" {
				other = testFamilies[1]
			}
			registerListener(t, e.coll.Maps["pepsal_listen"], f.other, listenTCP(t, other.network, other.lo))
		}})
	// Past --max-conns the daemon sets admission.full: fail open.
	e.check(t, tcase{name: f.name + "/syn_proxy_full", p: syn, want: one("syn_bypass_full"),
		setup: func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			e.put(t, "pepsal_admit", uint32(0), classifyAdmission{Full: 1})
			t.Cleanup(func() { e.put(t, "pepsal_admit", uint32(0), classifyAdmission{}) })
		}})
	e.check(t, tcase{name: f.name + "/syn_diverted", p: syn, want: one("syn_diverted"), mark: true, setup: e.withListener(f)})
	allPorts := syn
	allPorts.dport = 22
	e.check(t, tcase{name: f.name + "/syn_diverted_all_ports", p: allPorts, want: one("syn_diverted"), mark: true,
		setup: func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark, AllPorts: 1})
			t.Cleanup(func() { e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark}) })
		}})
	// A SYN to an intercepted port does not skip the later checks.
	rej := syn
	rej.dst = f.pick(rejectRoutes[0].v4, rejectRoutes[0].v6)
	e.check(t, tcase{name: f.name + "/syn_unroutable_with_listener", p: rej, want: one("syn_bypass_unroutable"), setup: e.withListener(f)})
}

// noConfigCase: no readable config. pepsal_config is an array, whose lookup
// cannot miss, so this case loads the classifier with it as an empty hash.
func noConfigCase(t *testing.T, e *classifyEnv) {
	t.Run("no_config", func(t *testing.T) {
		e.ns.EnterForTest(t)
		spec, err := loadClassify()
		if err != nil {
			t.Fatal(err)
		}
		spec.Maps["pepsal_config"].Type = ebpf.Hash
		coll := loadForTest(t, spec, nil)
		ne := &classifyEnv{ns: e.ns, ingress: e.ingress, coll: coll,
			counters: &counterSet{m: coll.Maps["pepsal_counters"], asserted: e.counters.asserted}}
		ne.counters.reset(t)
		if mark := ne.run(t, v4syn.bytes()); mark != 0 {
			t.Errorf("mark %#x, want none", mark)
		}
		ne.counters.expect(t, one("pkt_no_config"))
	})
}

// excludeForTest puts the keys of --exclude pfx in pepsal_exclude until the
// end of the test.
func excludeForTest(t *testing.T, e *classifyEnv, pfx netip.Prefix) {
	for _, k := range ExcludeKeys(pfx) {
		e.put(t, "pepsal_exclude", k, uint8(1))
		t.Cleanup(func() { e.del(t, "pepsal_exclude", k) })
	}
}
