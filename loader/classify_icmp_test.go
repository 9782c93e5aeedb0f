// SPDX-License-Identifier: Apache-2.0

package loader

// ICMP and ICMPv6 errors about TCP segments (issue #22): an error about a
// segment that a socket of this host sent must reach that socket (a
// --transparent server leg sends from the client's address, a client leg
// from the server's, so the kernel would forward it), and nothing else is
// taken from its quote.

import (
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// ICMP types.
const (
	icmpUnreach     = 3
	icmpRedirect    = 5
	icmpEcho        = 8
	icmpTimeExceed  = 11
	icmpParamProb   = 12
	icmp6Unreach    = 1
	icmp6TooBig     = 2
	icmp6TimeExceed = 3
	icmp6ParamProb  = 4
	icmp6Echo       = 128
)

// icmpAbout is an error from quote's destination side about quote, the
// path-MTU one of its family unless typ is given.
func icmpAbout(quote pkt, typ, code uint8) pkt {
	e := &icmpErr{typ: typ, code: code, quote: quote}
	if typ == 0 && quote.src.Is4() {
		e.typ, e.code, e.mtu = icmpUnreach, 4, 1200 // fragmentation needed
	} else if typ == 0 {
		e.typ, e.mtu = icmp6TooBig, 1280
	}
	return pkt{src: quote.dst, dst: quote.src, icmp: e}
}

// serverLeg makes p's quote a segment of a --transparent server leg (bound
// to the client's address, SYN_SENT toward the server).
func serverLeg(t *testing.T, p *pkt) {
	leg := netip.AddrPortFrom(p.icmp.quote.src, 41000)
	synSent(t, leg, netip.AddrPortFrom(p.icmp.quote.dst, p.icmp.quote.dport))
	e := *p.icmp
	e.quote.sport = leg.Port()
	p.icmp = &e
}

// quoteFrom makes p's quote a segment sent by the socket at from to to.
func quoteFrom(p *pkt, from, to netip.AddrPort) {
	e := *p.icmp
	e.quote.src, e.quote.sport, e.quote.dst, e.quote.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
	p.icmp = &e
	p.src, p.dst = to.Addr(), from.Addr()
}

func icmpCases(t *testing.T, e *classifyEnv, f testFamily) {
	icmpSocketCases(t, e, f)
	icmpQuoteCases(t, e, f)
}

// icmpSocketCases: errors about segments of local sockets and others.
func icmpSocketCases(t *testing.T, e *classifyEnv, f testFamily) {
	seg := f.syn
	seg.flags = tcpACK
	local := func(name string, p pkt) {
		e.check(t, tcase{name: f.name + "/icmp_" + name, p: p, want: one("icmp_local"), mark: true, setup: serverLeg})
	}
	local("path_mtu_server_leg", icmpAbout(seg, 0, 0))
	errs := [][2]uint8{{icmpUnreach, 1}, {icmpUnreach, 3}, {icmpTimeExceed, 0}, {icmpParamProb, 0}}
	if f.name == "v6" {
		errs = [][2]uint8{{icmp6Unreach, 4}, {icmp6TimeExceed, 0}, {icmp6ParamProb, 0}}
	}
	for _, te := range errs {
		local("type_"+strconv.Itoa(int(te[0]))+"_code_"+strconv.Itoa(int(te[1]))+"_server_leg", icmpAbout(seg, te[0], te[1]))
	}
	withOpts := seg
	withOpts.ipOpts = 8
	firstFrag := seg
	firstFrag.fragOff = 0x2000
	if f.name == "v4" {
		local("quote_with_options_server_leg", icmpAbout(withOpts, 0, 0))
		local("quote_of_first_fragment_server_leg", icmpAbout(firstFrag, 0, 0))
	}
	// A client leg (the accepted socket) sends from the server's address.
	e.check(t, tcase{name: f.name + "/icmp_path_mtu_client_leg", p: icmpAbout(seg, 0, 0), want: one("icmp_local"), mark: true,
		setup: func(t *testing.T, p *pkt) {
			c := dialPair(t, f.network, f.lo)
			quoteFrom(p, addrPort(c.s.LocalAddr()), addrPort(c.s.RemoteAddr()))
		}})
	// A forwarded flow's error goes on to its client.
	e.check(t, tcase{name: f.name + "/icmp_no_socket_forwarded", p: icmpAbout(seg, 0, 0), want: one("icmp_forwarded")})
	e.check(t, tcase{name: f.name + "/icmp_time_wait_forwarded", p: icmpAbout(seg, 0, 0), want: one("icmp_forwarded"),
		setup: func(t *testing.T, p *pkt) {
			c := dialPair(t, f.network, f.lo)
			from, to := addrPort(c.c.LocalAddr()), addrPort(c.c.RemoteAddr())
			timeWait(t, c)
			quoteFrom(p, from, to)
		}})
	e.check(t, tcase{name: f.name + "/icmp_listener_only_forwarded", p: icmpAbout(seg, 0, 0), want: one("icmp_forwarded"),
		setup: func(t *testing.T, p *pkt) {
			l := addrPort(listenTCP(t, f.network, f.lo).Addr())
			quoteFrom(p, l, netip.AddrPortFrom(l.Addr(), 40999))
		}})
}

// icmpQuoteCases: messages that are not errors about TCP, and quotes that
// cannot be read. Each quotes a server leg's segment, so that a misread
// quote would be delivered to it.
func icmpQuoteCases(t *testing.T, e *classifyEnv, f testFamily) {
	seg := f.syn
	seg.flags = tcpACK
	hdrs := 20
	notErrors := []uint8{icmpEcho, icmpRedirect, 0}
	if f.name == "v6" {
		hdrs = 40
		notErrors = []uint8{icmp6Echo, 0, 5, 127}
	}
	with := func(mod func(p *pkt)) pkt {
		p := icmpAbout(seg, 0, 0)
		e := *p.icmp
		p.icmp = &e
		mod(&p)
		return p
	}
	cases := []struct {
		name string
		p    pkt
		want string
	}{
		{"quote_cut_in_ip_header", with(func(p *pkt) { p.icmp.quoteLen = hdrs - 1 }), "icmp_unparsed"},
		{"quote_ports_only", with(func(p *pkt) { p.icmp.quoteLen = hdrs + 4 }), "icmp_unparsed"},
		{"quote_past_ip_length", with(func(p *pkt) { p.ipLen = ipLenOf(f, 0, 8+hdrs+7) }), "icmp_unparsed"},
		{"quote_version_mismatch", with(func(p *pkt) { p.icmp.quote.version = 5 }), "icmp_unparsed"},
		{"quote_of_udp", with(func(p *pkt) { p.icmp.quote.proto = unix.IPPROTO_UDP }), "pkt_not_tcp"},
		{"header_cut", with(func(p *pkt) { p.icmp.quoteLen = 1; p.ipLen = ipLenOf(f, 0, 4); p.truncate = 5 }), "pkt_unparsed"},
	}
	for _, typ := range notErrors {
		cases = append(cases, struct {
			name string
			p    pkt
			want string
		}{"type_" + strconv.Itoa(int(typ)), with(func(p *pkt) { p.icmp.typ = typ }), "pkt_not_tcp"})
	}
	if f.name == "v4" {
		cases = append(cases, []struct {
			name string
			p    pkt
			want string
		}{
			{"quote_of_later_fragment", with(func(p *pkt) { p.icmp.quote.fragOff = 185 }), "icmp_unparsed"},
			{"quote_ihl_4", with(func(p *pkt) { p.icmp.quote.ihl = u8(4) }), "icmp_unparsed"},
			{"error_fragmented", with(func(p *pkt) { p.fragOff = 0x2000 }), "pkt_fragment"},
		}...)
	} else {
		cases = append(cases, struct {
			name string
			p    pkt
			want string
		}{"quote_behind_extension_header", with(func(p *pkt) { p.icmp.quote.ext = []uint8{nhDestOpts} }), "icmp_unparsed"})
	}
	for _, c := range cases {
		e.check(t, tcase{name: f.name + "/icmp_" + c.name, p: c.p, want: one(c.want), setup: serverLeg})
	}
}
