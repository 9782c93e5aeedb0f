// SPDX-License-Identifier: Apache-2.0

package loader

// Hostile packets (issue #22): what arrives at tc ingress has not been
// checked by anything yet. Each case is a packet that would be diverted if
// the classifier believed it (a listener is registered unless said
// otherwise), and the counter that says why it was not. The verifier already
// rules out reads past the frame; these cases check the decisions.

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func hostileCases(t *testing.T, e *classifyEnv, f testFamily) {
	hostileFlagCases(t, e, f)
	hostileHeaderCases(t, e, f)
	if f.name == "v4" {
		hostileV4Cases(t, e)
	} else {
		hostileV6Cases(t, e)
	}
}

// hostileCase checks p with a listener registered: a packet that is not
// left alone is diverted.
func (e *classifyEnv) hostileCase(t *testing.T, f testFamily, name string, p pkt, want string) {
	e.check(t, tcase{name: f.name + "/" + name, p: p, want: one(want), mark: want == "syn_diverted", setup: e.withListener(f)})
}

// hostileFlagCases: TCP flags and data offsets.
func hostileFlagCases(t *testing.T, e *classifyEnv, f testFamily) {
	with := func(mod func(p *pkt)) pkt {
		p := f.syn
		mod(&p)
		return p
	}
	for _, c := range []struct {
		name string
		p    pkt
		want string
	}{
		// The proxy's listener drops a SYN with FIN or RST; the server decides.
		{"syn_fin", with(func(p *pkt) { p.flags |= tcpFIN }), "syn_bad_flags"},
		{"syn_rst", with(func(p *pkt) { p.flags |= tcpRST }), "syn_bad_flags"},
		{"syn_fin_rst", with(func(p *pkt) { p.flags |= tcpFIN | tcpRST }), "syn_bad_flags"},
		// A SYN-ACK opens nothing: it follows its socket (none here).
		{"syn_ack_no_socket", with(func(p *pkt) { p.flags |= tcpACK }), "pkt_forwarded"},
		// ECN's setup flags are an ordinary SYN's.
		{"syn_ece_cwr_diverted", with(func(p *pkt) { p.flags |= 0xc0 }), "syn_diverted"},
		// Data offsets the kernel's TCP would drop.
		{"doff_0", with(func(p *pkt) { p.doff = u8(0) }), "pkt_malformed"},
		{"doff_4", with(func(p *pkt) { p.doff = u8(4) }), "pkt_malformed"},
		{"doff_past_packet", with(func(p *pkt) { p.doff = u8(6) }), "pkt_malformed"},
		{"doff_15_past_packet", with(func(p *pkt) { p.doff = u8(15); p.payload = 39 }), "pkt_malformed"},
		// 40 bytes of options (zeros: end of list) that are there.
		{"doff_15_diverted", with(func(p *pkt) { p.doff = u8(15); p.payload = 40 }), "syn_diverted"},
		// The packet ends before the Ethernet frame (padding): only the IP length counts.
		{"ethernet_padding_diverted", with(func(p *pkt) { p.payload = 6; p.ipLen = ipLenOf(f, 0, 20) }), "syn_diverted"},
	} {
		e.hostileCase(t, f, c.name, c.p, c.want)
	}
	// The server's SYN-ACK to a --transparent server leg (bound to the
	// client's address, SYN_SENT) reaches it.
	synack := f.syn
	synack.flags = tcpSYN | tcpACK
	e.check(t, tcase{name: f.name + "/syn_ack_to_transparent_syn_sent", p: synack, want: one("pkt_local_socket"), mark: true,
		setup: func(t *testing.T, p *pkt) {
			leg := netip.AddrPortFrom(p.src, 41000)
			synSent(t, leg, netip.AddrPortFrom(p.dst, p.dport))
			p.src, p.sport, p.dst, p.dport = p.dst, p.dport, leg.Addr(), leg.Port()
		}})
}

// ipLenOf is the IP length field of f's packet with opts bytes of IPv4
// options (or IPv6 extension headers) and l4 bytes after them.
func ipLenOf(f testFamily, opts, l4 int) *uint16 {
	if f.name == "v4" {
		return u16(uint16(20 + opts + l4))
	}
	return u16(uint16(opts + l4))
}

// hostileHeaderCases: IP versions and lengths that lie.
func hostileHeaderCases(t *testing.T, e *classifyEnv, f testFamily) {
	with := func(mod func(p *pkt)) pkt {
		p := f.syn
		mod(&p)
		return p
	}
	otherVersion := uint8(6)
	if f.name == "v6" {
		otherVersion = 4
	}
	for _, c := range []struct {
		name string
		p    pkt
		want string
	}{
		{"ip_version_mismatch", with(func(p *pkt) { p.version = otherVersion }), "pkt_malformed"},
		{"ip_length_0", with(func(p *pkt) { p.ipLen = u16(0) }), "pkt_malformed"},
		{"ip_length_cuts_tcp_header", with(func(p *pkt) { p.ipLen = ipLenOf(f, 0, 19) }), "pkt_malformed"},
		{"ip_length_past_frame", with(func(p *pkt) { p.ipLen = ipLenOf(f, 0, 21) }), "pkt_unparsed"},
		{"ip_length_max", with(func(p *pkt) { p.ipLen = u16(0xffff) }), "pkt_unparsed"},
	} {
		e.hostileCase(t, f, c.name, c.p, c.want)
	}
	// BIG TCP: a GSO skb over 64 KiB gives length 0; its skb's length counts.
	big := f.syn
	big.flags, big.payload, big.ipLen = tcpACK, 1000, u16(0)
	e.check(t, tcase{name: f.name + "/big_tcp_gso_length_0", p: big, gso: 500, want: one("pkt_forwarded")})
}

// hostileV4Cases: IPv4 header lengths, options and fragments.
func hostileV4Cases(t *testing.T, e *classifyEnv) {
	f := testFamilies[0]
	with := func(mod func(p *pkt)) pkt {
		p := v4syn
		mod(&p)
		return p
	}
	cases := []struct {
		name string
		p    pkt
		want string
	}{
		{"ip_length_below_header", with(func(p *pkt) { p.ipLen = u16(19) }), "pkt_malformed"},
		// IHL 6 with no options there: the TCP header would end past the frame.
		{"ihl_6_without_options", with(func(p *pkt) { p.ihl = u8(6) }), "pkt_unparsed"},
		{"ihl_15_without_options", with(func(p *pkt) { p.ihl = u8(15) }), "pkt_malformed"},
		// Options the proxy could not carry to the server: forwarded unsplit.
		{"syn_ip_options_4", with(func(p *pkt) { p.ipOpts = 4 }), "syn_ip_options"},
		{"syn_ip_options_40", with(func(p *pkt) { p.ipOpts = 40 }), "syn_ip_options"},
		// Don't fragment is no fragment.
		{"syn_dont_fragment_diverted", with(func(p *pkt) { p.fragOff = 0x4000 }), "syn_diverted"},
		// A first fragment holds the TCP header, but marking it alone would
		// split the datagram between this host and the server.
		{"first_fragment", with(func(p *pkt) { p.fragOff = 0x2000 }), "pkt_fragment"},
		{"later_fragment", with(func(p *pkt) { p.fragOff = 185 }), "pkt_fragment"},
		{"middle_fragment", with(func(p *pkt) { p.fragOff = 0x2000 | 185 }), "pkt_fragment"},
		{"udp_fragment", with(func(p *pkt) { p.fragOff = 185; p.proto = unix.IPPROTO_UDP }), "pkt_not_tcp"},
	}
	for _, c := range cases {
		e.hostileCase(t, f, c.name, c.p, c.want)
	}
	for i := uint8(0); i < 5; i++ {
		e.hostileCase(t, f, "ihl_"+string('0'+rune(i)), with(func(p *pkt) { p.ihl = u8(i) }), "pkt_malformed")
	}
	// Packets of a split flow with options or fragmented: options are read
	// past, a later fragment is never taken for a TCP header, even one that
	// looks like the flow's.
	e.check(t, tcase{name: "v4/ack_ip_options_local_socket", p: pkt{flags: tcpACK, ipOpts: 12}, want: one("pkt_local_socket"), mark: true,
		setup: e.dialedFlow(f)})
	e.check(t, tcase{name: "v4/later_fragment_like_local_flow", p: pkt{flags: tcpACK, fragOff: 185}, want: one("pkt_fragment"),
		setup: e.dialedFlow(f)})
}

// dialedFlow makes p a packet of a loopback connection, as the dialer's
// packets arrive at the accepted socket.
func (e *classifyEnv) dialedFlow(f testFamily) func(t *testing.T, p *pkt) {
	return func(t *testing.T, p *pkt) {
		c := dialPair(t, f.network, f.lo)
		from, to := addrPort(c.c.LocalAddr()), addrPort(c.c.RemoteAddr())
		p.src, p.sport, p.dst, p.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
	}
}

// hostileV6Cases: every IPv6 extension header before TCP, and fragments.
func hostileV6Cases(t *testing.T, e *classifyEnv) {
	f := testFamilies[1]
	for _, x := range []struct {
		name string
		ext  []uint8
		want string
	}{
		{"hop_by_hop", []uint8{nhHopByHop}, "pkt_unparsed"},
		{"routing", []uint8{nhRouting}, "pkt_unparsed"},
		{"dest_opts", []uint8{nhDestOpts}, "pkt_unparsed"},
		{"ah", []uint8{nhAH}, "pkt_unparsed"},
		{"mobility", []uint8{nhMobility}, "pkt_unparsed"},
		{"hip", []uint8{nhHIP}, "pkt_unparsed"},
		{"shim6", []uint8{nhShim6}, "pkt_unparsed"},
		{"experimental_253", []uint8{nhExp1}, "pkt_unparsed"},
		{"experimental_254", []uint8{nhExp2}, "pkt_unparsed"},
		{"hop_by_hop_dest_opts", []uint8{nhHopByHop, nhDestOpts}, "pkt_unparsed"},
		{"esp", []uint8{nhESP}, "pkt_not_tcp"}, // all after it is encrypted
		{"first_fragment", []uint8{nhFragment}, "pkt_fragment"},
	} {
		p := v6syn
		p.ext = x.ext
		if x.name == "first_fragment" {
			p.fragOff = 1 // offset 0, more fragments
		}
		e.hostileCase(t, f, "ext_"+x.name, p, x.want)
	}
	later := v6syn
	later.ext, later.fragOff = []uint8{nhFragment}, 185<<3
	e.hostileCase(t, f, "later_fragment", later, "pkt_fragment")
	udpFrag := later
	udpFrag.proto = unix.IPPROTO_UDP
	e.hostileCase(t, f, "udp_fragment", udpFrag, "pkt_not_tcp")
	noNext := v6syn
	noNext.proto = nhNone
	e.hostileCase(t, f, "no_next_header", noNext, "pkt_not_tcp")
	// The frame ends inside the fragment header (the IP length agrees).
	cut := pkt{src: clientV6, dst: serverV6, ext: []uint8{nhFragment}, ipLen: u16(4), truncate: 24}
	e.hostileCase(t, f, "fragment_header_cut", cut, "pkt_unparsed")
	// A split flow's packet behind an extension header is not followed
	// (forwarded unsplit, as its SYN would have been).
	e.check(t, tcase{name: "v6/ack_hop_by_hop_local_flow", p: pkt{flags: tcpACK, ext: []uint8{nhHopByHop}}, want: one("pkt_unparsed"),
		setup: e.dialedFlow(f)})
}
