// SPDX-License-Identifier: Apache-2.0

package loader

// Hand-built frames for the classifier's tests: well formed unless a field
// of pkt says otherwise, so that each hostile case names the one thing that
// is wrong with it. No checksum is computed: the kernel checks them after
// tc ingress, and the classifier never reads them.

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// IPv6 next header values of the extension headers (and the two ends of a
// chain that are not: ESP, after which all is encrypted, and no next header).
const (
	nhHopByHop = 0
	nhRouting  = 43
	nhFragment = 44
	nhESP      = 50
	nhAH       = 51
	nhNone     = 59
	nhDestOpts = 60
	nhMobility = 135
	nhHIP      = 139
	nhShim6    = 140
	nhExp1     = 253
	nhExp2     = 254
)

// pkt describes an Ethernet frame carrying TCP, or an ICMP error quoting a
// TCP segment, over IPv4 or IPv6.
type pkt struct {
	src, dst     netip.Addr
	sport, dport uint16
	flags        uint8
	tos          uint8    // IPv4 ToS or IPv6 traffic class
	proto        uint8    // IP protocol or last next header; 0 means TCP
	ext          []uint8  // IPv6: extension headers before proto, each a minimal one of its kind
	fragOff      uint16   // IPv4: the flags and fragment offset field; IPv6: the fragment header's offset and M flag
	ipOpts       int      // IPv4: bytes of options (NOPs), a multiple of 4
	ihl          *uint8   // IPv4: header length in words, instead of the true one
	version      uint8    // IP version, instead of 4 or 6
	ipLen        *uint16  // IPv4 total length or IPv6 payload length, instead of the true one
	doff         *uint8   // TCP data offset in words, instead of 5
	payload      int      // bytes of TCP data
	icmp         *icmpErr // instead of TCP: an ICMP(v6) error quoting a segment
	truncate     int      // drop this many bytes from the end
}

// icmpErr is an ICMP or ICMPv6 error that quotes the start of another packet.
type icmpErr struct {
	typ, code uint8
	mtu       uint16 // fragmentation needed, packet too big
	quote     pkt    // what the error is about (as its sender sent it)
	quoteLen  int    // bytes of quote's IP packet; 0: its headers and 8 bytes of TCP, as routers quote
}

func u16(v uint16) *uint16 { return &v }
func u8(v uint8) *uint8    { return &v }

func (p pkt) tcp() []byte {
	tcp := make([]byte, 20+p.payload)
	binary.BigEndian.PutUint16(tcp[0:], p.sport)
	binary.BigEndian.PutUint16(tcp[2:], p.dport)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	if p.flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], 2000)
	}
	tcp[12] = 5 << 4
	if p.doff != nil {
		tcp[12] = *p.doff << 4
	}
	tcp[13] = p.flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	return tcp
}

// l4 is what follows the IP header (and IPv6's extension headers).
func (p pkt) l4() (proto uint8, b []byte) {
	if p.icmp != nil {
		if p.src.Is4() {
			return unix.IPPROTO_ICMP, p.icmp.bytes(true)
		}
		return unix.IPPROTO_ICMPV6, p.icmp.bytes(false)
	}
	proto = p.proto
	if proto == 0 {
		proto = unix.IPPROTO_TCP
	}
	return proto, p.tcp()
}

func (e *icmpErr) bytes(v4 bool) []byte {
	h := []byte{e.typ, e.code, 0, 0, 0, 0, 0, 0}
	if v4 {
		binary.BigEndian.PutUint16(h[6:], e.mtu)
	} else {
		binary.BigEndian.PutUint32(h[4:], uint32(e.mtu))
	}
	q := e.quote.ip()
	n := e.quoteLen
	if n == 0 {
		n = len(q) - len(e.quote.tcp()) + 8
	}
	return append(h, q[:n]...)
}

// ip is the IP packet, without Ethernet.
func (p pkt) ip() []byte {
	if p.src.Is4() {
		return p.ipv4()
	}
	return p.ipv6()
}

func (p pkt) ipv4() []byte {
	proto, l4 := p.l4()
	hlen := 20 + p.ipOpts
	ip := make([]byte, hlen)
	ihl, version := uint8(hlen/4), p.version
	if p.ihl != nil {
		ihl = *p.ihl
	}
	if version == 0 {
		version = 4
	}
	ip[0] = version<<4 | ihl&0xf
	ip[1] = p.tos
	binary.BigEndian.PutUint16(ip[2:], uint16(hlen+len(l4)))
	if p.ipLen != nil {
		binary.BigEndian.PutUint16(ip[2:], *p.ipLen)
	}
	binary.BigEndian.PutUint16(ip[6:], p.fragOff)
	ip[8] = 64
	ip[9] = proto
	src, dst := p.src.As4(), p.dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	for i := 20; i < hlen; i++ {
		ip[i] = 1 // NOP
	}
	var sum uint32
	for i := 0; i < hlen; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return append(ip, l4...)
}

func (p pkt) ipv6() []byte {
	proto, l4 := p.l4()
	var exts []byte
	for i, x := range p.ext {
		next := proto
		if i+1 < len(p.ext) {
			next = p.ext[i+1]
		}
		exts = append(exts, extHeader(x, next, p.fragOff)...)
	}
	first := proto
	if len(p.ext) > 0 {
		first = p.ext[0]
	}
	version := p.version
	if version == 0 {
		version = 6
	}
	ip := make([]byte, 40)
	binary.BigEndian.PutUint32(ip[0:], uint32(version)<<28|uint32(p.tos)<<20)
	binary.BigEndian.PutUint16(ip[4:], uint16(len(exts)+len(l4)))
	if p.ipLen != nil {
		binary.BigEndian.PutUint16(ip[4:], *p.ipLen)
	}
	ip[6] = first
	ip[7] = 64
	src, dst := p.src.As16(), p.dst.As16()
	copy(ip[8:], src[:])
	copy(ip[24:], dst[:])
	return append(append(ip, exts...), l4...)
}

// extHeader is a minimal IPv6 extension header of kind x followed by next.
func extHeader(x, next uint8, fragOff uint16) []byte {
	switch x {
	case nhFragment:
		h := []byte{next, 0, 0, 0, 0, 0, 0x5e, 0x9a}
		binary.BigEndian.PutUint16(h[2:], fragOff)
		return h
	case nhAH: // 12 bytes and a 4-byte ICV: length (16/4)-2
		return []byte{next, 2, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	case nhESP: // SPI and sequence number; the rest is ciphertext
		return []byte{0, 0, 0x10, 0, 0, 0, 0, 1}
	case nhRouting: // segment routing, no segments left
		return []byte{next, 0, 4, 0, 0, 0, 0, 0}
	}
	return []byte{next, 0, 1, 4, 0, 0, 0, 0} // a PadN option filling 8 bytes
}

// bytes is the Ethernet frame.
func (p pkt) bytes() []byte {
	eth := []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0, 0}
	binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IP)
	if p.src.Is6() {
		binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IPV6)
	}
	out := append(eth, p.ip()...)
	return out[:len(out)-p.truncate]
}
