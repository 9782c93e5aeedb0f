// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"crypto/hmac"
	"net/netip"
	"testing"

	"github.com/pepsal/pepsal/userspace/report"
)

// The fuzz targets of the warm-path protocol: what a terminal reads (the
// hello) and what a gateway reads (the header). `make fuzz-short` runs each
// briefly, `make fuzz` long; their seeds run with the unit tests.

// fuzzAddr is an address from 4 or 16 bytes; any other length is the zero
// (invalid) address, which an encoder must refuse.
func fuzzAddr(b []byte) netip.Addr {
	switch len(b) {
	case 4:
		return netip.AddrFrom4([4]byte(b))
	case 16:
		return netip.AddrFrom16([16]byte(b))
	}
	return netip.Addr{}
}

// fuzzHello is a hello of 24 bytes made of b (cut or padded with zeros).
func fuzzHello(b []byte) hello {
	var h hello
	copy(h[:], b)
	return h
}

// decodable says whether decodeHeader takes an authentic header of these
// (unmapped) addresses: a destination that can be dialed.
func decodable(dst netip.AddrPort) bool {
	return dst.Port() != 0 && !dst.Addr().IsUnspecified() && !dst.Addr().IsMulticast()
}

func unmapPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// FuzzPeerHeaderRoundTrip: EncodeHeader refuses exactly a bad hello,
// a missing address or mixed families; what it encodes decodes, with the
// same key and hello, to the same header (IPv4-mapped addresses as IPv4),
// or is refused as garbage when its destination cannot be dialed; with
// another key it is a bad MAC, on another connection a replay.
func FuzzPeerHeaderRoundTrip(f *testing.F) {
	h, err := newHello()
	if err != nil {
		f.Fatal(err)
	}
	v4 := func(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }
	v6 := func(s string) []byte { a := netip.MustParseAddr(s).As16(); return a[:] }
	f.Add(h[:], testKey, v4("10.0.0.1"), uint16(443), v4("192.168.1.2"), uint16(50000), uint8(0x28))
	f.Add(h[:], testKey, v6("2001:db8::1"), uint16(80), v6("fd00::2"), uint16(1234), uint8(0))
	f.Add(h[:], testKey, v6("::ffff:10.0.0.1"), uint16(443), v4("10.0.0.2"), uint16(1), uint8(0))
	f.Add(h[:], testKey, v4("10.0.0.1"), uint16(443), v6("fd00::2"), uint16(1), uint8(0))
	f.Add(h[:], testKey, v4("224.0.0.1"), uint16(0), v4("0.0.0.0"), uint16(0), uint8(0xff))
	f.Add([]byte("SSH-2.0-OpenSSH_9.2p1 Debian"), []byte{}, []byte{1, 2, 3}, uint16(1), v4("10.0.0.2"), uint16(1), uint8(0))
	f.Fuzz(func(t *testing.T, helloBytes, key, dstIP []byte, dport uint16, cliIP []byte, cport uint16, tos uint8) {
		dst := netip.AddrPortFrom(fuzzAddr(dstIP), dport)
		cli := netip.AddrPortFrom(fuzzAddr(cliIP), cport)
		b, err := EncodeHeader(key, helloBytes, dst, cli, tos)
		refuse := len(helloBytes) != HelloLen || !bytes.Equal(helloBytes[:5], []byte("PEPG\x01")) ||
			!dst.Addr().IsValid() || !cli.Addr().IsValid() || dst.Addr().Unmap().Is4() != cli.Addr().Unmap().Is4()
		if (err != nil) != refuse {
			t.Fatalf("EncodeHeader(hello %x, %v, %v): %v; want refused: %v", helloBytes, dst, cli, err, refuse)
		}
		if err != nil {
			return
		}
		if len(b) != HeaderLen {
			t.Fatalf("header of %d bytes", len(b))
		}
		h := hello(helloBytes)
		got, err := decodeHeader(key, h, b)
		want := header{ToS: tos, Dst: unmapPort(dst), Client: unmapPort(cli)}
		switch {
		case !decodable(want.Dst):
			if reason(err) != report.AuthGarbage {
				t.Fatalf("undialable %v decoded: %+v, %v", want.Dst, got, err)
			}
		case err != nil || got != want:
			t.Fatalf("decoded %+v, %v; want %+v", got, err, want)
		}
		otherKey := append([]byte{^byte(len(key))}, key...) // not key, even with zeros padded (HMAC)
		if _, err := decodeHeader(otherKey, h, b); reason(err) != report.AuthBadMAC {
			t.Fatalf("with another key: %v", err)
		}
		other := h
		other[8] ^= 1
		if _, err := decodeHeader(key, other, b); reason(err) != report.AuthReplay {
			t.Fatalf("on another connection: %v", err)
		}
	})
}

// sign makes b authentic for the connection that sent h, as far as it
// is long enough: bit 0 of how echoes the challenge, bit 1 adds the MAC.
func sign(b []byte, key []byte, h hello, how uint8) {
	if how&1 != 0 && len(b) >= 60 {
		copy(b[44:60], h.challenge())
	}
	if how&2 != 0 && len(b) >= HeaderLen {
		copy(b[headerMACAt:HeaderLen], headerMAC(key, h, b[:headerMACAt]))
	}
}

// wantReason is the reason decodeHeader must refuse b under, checked in
// the order a gateway must check (nothing of an unauthenticated header is
// believed); "" once b is authentic (its fields may still be refused).
func wantReason(key []byte, h hello, b []byte) string {
	switch {
	case len(b) < HeaderLen:
		return report.AuthIncomplete
	case !bytes.Equal(b[:5], []byte("PEPW\x01")):
		return report.AuthGarbage
	case !bytes.Equal(b[44:60], h[8:]):
		return report.AuthReplay
	case !hmac.Equal(b[headerMACAt:HeaderLen], headerMAC(key, h, b[:headerMACAt])):
		return report.AuthBadMAC
	}
	return ""
}

// FuzzPeerDecodeHeader: a hello passes checkHello exactly with its magic
// and version; decodeHeader refuses what is not authentic with the right
// reason, and what it accepts is a header whose encoding is exactly the
// bytes it read (one encoding per header: nothing unchecked rides along)
// with a destination that can be dialed.
func FuzzPeerDecodeHeader(f *testing.F) {
	h, err := newHello()
	if err != nil {
		f.Fatal(err)
	}
	good, err := header{ToS: 1, Dst: netip.MustParseAddrPort("10.0.0.1:443"), Client: netip.MustParseAddrPort("10.0.0.2:5")}.encode(testKey, h)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(h[:], good[:], uint8(0))
	f.Add(h[:], append(good[:], "GET / HTTP/1.1\r\n"...), uint8(3))
	f.Add(h[:], good[:50], uint8(3))
	mixed := good
	mixed[7] = 6
	f.Add(h[:], mixed[:], uint8(3))
	flagged := good
	flagged[5] = 1
	f.Add(h[:], flagged[:], uint8(3))
	f.Add([]byte("SSH-2.0-OpenSSH_9.2p1 Debian"), bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8), uint8(3))
	f.Fuzz(func(t *testing.T, helloBytes, b []byte, how uint8) {
		h := fuzzHello(helloBytes)
		if ok := checkHello(h) == nil; ok != bytes.Equal(h[:5], []byte("PEPG\x01")) {
			t.Fatalf("checkHello(%x): %v", h, ok)
		}
		b = bytes.Clone(b)
		sign(b, testKey, h, how)
		p, err := decodeHeader(testKey, h, b)
		want := wantReason(testKey, h, b)
		if want != "" || err != nil {
			if err == nil || (want != "" && reason(err) != want) || (want == "" && reason(err) != report.AuthGarbage) {
				t.Fatalf("decodeHeader(%x): %+v, %v; want refused as %q", b, p, err, want)
			}
			return
		}
		if !decodable(p.Dst) || p.Dst.Addr().Is4In6() || p.Client.Addr().Is4In6() || p.Dst.Addr().Is4() != p.Client.Addr().Is4() {
			t.Fatalf("decodeHeader(%x) accepted %+v", b, p)
		}
		again, err := p.encode(testKey, h)
		if err != nil || !bytes.Equal(again[:], b[:HeaderLen]) {
			t.Fatalf("decodeHeader(%x) = %+v, which encodes as %x, %v", b[:HeaderLen], p, again, err)
		}
	})
}
