// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// buildFrame returns an Ethernet frame with a TCP (or UDP) segment carrying
// payload, all checksums correct.
func buildFrame(v6, udp bool, payload []byte, flags byte) (f []byte, nh, l4 int) {
	be := binary.BigEndian
	f = make([]byte, 14)
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	nh = 14
	proto := byte(protoTCP)
	l4hdr := 32 // TCP with timestamps
	if udp {
		proto, l4hdr = protoUDP, 8
	}
	l4len := l4hdr + len(payload)
	if v6 {
		be.PutUint16(f[12:], etherIPv6)
		ip := make([]byte, 40)
		ip[0] = 0x60
		be.PutUint16(ip[4:], uint16(l4len))
		ip[6], ip[7] = proto, 64
		ip[23], ip[39] = 2, 3 // ::2 -> ::3 under fd77::
		ip[8], ip[9], ip[24], ip[25] = 0xfd, 0x77, 0xfd, 0x77
		f = append(f, ip...)
	} else {
		be.PutUint16(f[12:], etherIPv4)
		ip := make([]byte, 20)
		ip[0] = 0x45
		be.PutUint16(ip[2:], uint16(20+l4len))
		be.PutUint16(ip[4:], 1000)
		ip[6], ip[8], ip[9] = 0x40, 64, proto
		copy(ip[12:], []byte{10, 77, 2, 2, 10, 77, 1, 2})
		putChecksum(ip[10:], fold(sum16(ip, 0)))
		f = append(f, ip...)
	}
	l4 = len(f)
	h := make([]byte, l4hdr)
	if udp {
		be.PutUint16(h[0:], 5000)
		be.PutUint16(h[2:], 6000)
		be.PutUint16(h[4:], uint16(l4len))
	} else {
		be.PutUint16(h[0:], 5000)
		be.PutUint16(h[2:], 6000)
		be.PutUint32(h[4:], 0xfffff000) // wraps within the super-frame
		h[12] = byte(l4hdr/4) << 4
		h[13] = flags
		be.PutUint16(h[14:], 512)
		h[20], h[21], h[22], h[23] = 1, 1, 8, 10 // NOP NOP TS
	}
	f = append(f, h...)
	f = append(f, payload...)
	csumAt := l4 + 16
	if udp {
		csumAt = l4 + 6
	}
	putChecksum(f[csumAt:], fold(sum16(f[l4:], pseudoSum(f, nh, v6, proto, l4len))))
	return f, nh, l4
}

// checkFrame verifies lengths and checksums the way a receiver would.
func checkFrame(t *testing.T, f []byte, v6, udp bool) {
	t.Helper()
	be := binary.BigEndian
	nh := 14
	proto := uint8(protoTCP)
	if udp {
		proto = protoUDP
	}
	l4 := nh + 20
	if v6 {
		l4 = nh + 40
		if int(be.Uint16(f[nh+4:])) != len(f)-l4 {
			t.Fatalf("IPv6 payload length %d, frame carries %d", be.Uint16(f[nh+4:]), len(f)-l4)
		}
	} else {
		if int(be.Uint16(f[nh+2:])) != len(f)-nh {
			t.Fatalf("IPv4 total length %d, frame carries %d", be.Uint16(f[nh+2:]), len(f)-nh)
		}
		if s := fold(sum16(f[nh:l4], 0)); s != 0xffff {
			t.Fatalf("bad IPv4 header checksum (sum %#x)", s)
		}
	}
	if udp && int(be.Uint16(f[l4+4:])) != len(f)-l4 {
		t.Fatalf("UDP length %d, carries %d", be.Uint16(f[l4+4:]), len(f)-l4)
	}
	if s := fold(sum16(f[l4:], pseudoSum(f, nh, v6, proto, len(f)-l4))); s != 0xffff {
		t.Fatalf("bad L4 checksum (sum %#x)", s)
	}
}

func TestSegmentTCP(t *testing.T) {
	payload := make([]byte, 3*1448+100)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, v6 := range []bool{false, true} {
		f, nh, l4 := buildFrame(v6, false, payload, 0x18|0x01|0x80) // PSH ACK FIN CWR
		typ := uint8(gsoTCPv4)
		if v6 {
			typ = gsoTCPv6
		}
		h := vnetHdr{flags: vnetNeedsCsum, gsoType: typ | gsoECN, gsoSize: 1448, csumStart: uint16(l4), csumOffset: 16}
		segs, err := wireFrames(h, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(segs) != 4 {
			t.Fatalf("v6=%v: %d segments, want 4", v6, len(segs))
		}
		var joined []byte
		for i, s := range segs {
			checkFrame(t, s, v6, false)
			if i < 3 && len(s) != l4+32+1448 {
				t.Fatalf("segment %d is %d bytes, want %d", i, len(s), l4+32+1448)
			}
			seq := binary.BigEndian.Uint32(s[l4+4:])
			if want := 0xfffff000 + uint32(i*1448); seq != want {
				t.Fatalf("segment %d seq %#x, want %#x", i, seq, want)
			}
			fl := s[l4+13]
			last := i == len(segs)-1
			if (fl&0x01 != 0) != last || (fl&0x08 != 0) != last || (fl&0x80 != 0) != (i == 0) || fl&0x10 == 0 {
				t.Fatalf("segment %d flags %#x", i, fl)
			}
			if !v6 {
				if id := binary.BigEndian.Uint16(s[nh+4:]); id != 1000+uint16(i) {
					t.Fatalf("segment %d IP ID %d", i, id)
				}
			}
			joined = append(joined, s[l4+32:]...)
		}
		if !bytes.Equal(joined, payload) {
			t.Fatal("payload not preserved")
		}
	}
}

func TestSegmentUDPL4(t *testing.T) {
	payload := make([]byte, 2500)
	f, _, l4 := buildFrame(false, true, payload, 0)
	h := vnetHdr{flags: vnetNeedsCsum, gsoType: gsoUDPL4, gsoSize: 1000, csumStart: uint16(l4), csumOffset: 6}
	segs, err := wireFrames(h, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 3 {
		t.Fatalf("%d segments", len(segs))
	}
	for _, s := range segs {
		checkFrame(t, s, false, true)
	}
}

func TestFinishPartialChecksum(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		f, nh, l4 := buildFrame(v6, false, []byte("hello, satellite"), 0x18)
		want := append([]byte(nil), f...)
		// What a CHECKSUM_PARTIAL skb carries: the folded pseudo-header sum.
		binary.BigEndian.PutUint16(f[l4+16:], fold(pseudoSum(f, nh, v6, protoTCP, len(f)-l4)))
		got, err := wireFrames(vnetHdr{flags: vnetNeedsCsum, csumStart: uint16(l4), csumOffset: 16}, f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[0], want) {
			t.Fatalf("v6=%v: finished checksum %x, want %x", v6, got[0][l4+16:l4+18], want[l4+16:l4+18])
		}
	}
}

// Garbage must be rejected, never panic.
func TestMalformedNoPanic(t *testing.T) {
	f, _, l4 := buildFrame(false, false, make([]byte, 3000), 0x10)
	hs := []vnetHdr{
		{flags: vnetNeedsCsum, csumStart: 60000},
		{flags: vnetNeedsCsum, csumStart: uint16(l4), csumOffset: 60000},
		{gsoType: gsoTCPv4, gsoSize: 0},
		{gsoType: 3, gsoSize: 1000}, // UFO: not supported
		{flags: vnetNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1448, csumStart: 10},
		{flags: vnetNeedsCsum, gsoType: gsoTCPv6, gsoSize: 1448, csumStart: uint16(l4)},
	}
	for _, h := range hs {
		for _, n := range []int{0, 5, 13, 20, 40, l4, l4 + 10, len(f)} {
			if _, err := wireFrames(h, f[:n]); err == nil && h.gsoType != gsoNone {
				t.Fatalf("%+v on %d bytes accepted", h, n)
			}
		}
	}
	if _, err := parseVnetHdr([]byte{1, 2}); err == nil {
		t.Fatal("short vnet header accepted")
	}
}
