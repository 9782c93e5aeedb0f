// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pepsal/pepsal/userspace/report"
)

// The warm-path protocol between a terminal pepsal and a gateway pepsal.
//
// The gateway speaks first: on accepting a terminal's connection it sends a
// hello with a fresh random challenge. The terminal keeps the connection idle
// in its pool; when a client flow takes it, the terminal sends one header,
// MAC'd with the pre-shared key over the hello and the header, followed by
// the client's bytes. A header is valid on one connection only (the
// challenge is that connection's), so a captured header cannot be replayed,
// with no clock to agree on and no replay cache to bound.
//
//	hello  (24 bytes): magic "PEPG", version, 3 zero bytes, challenge[16]
//	header (92 bytes): magic "PEPW", version, flags, ToS, family (4|6),
//	                   dst addr[16] port[2], client addr[16] port[2],
//	                   challenge[16] (echo), MAC[32]
//
// MAC = HMAC-SHA256(key, hello || header[:60]). Addresses are IPv4-mapped
// when family is 4; ports are big endian.
//
// HelloLen and HeaderLen are exported for tools and tests that speak the
// protocol (EncodeHeader).
const (
	version      = 1
	HelloLen     = 24
	HeaderLen    = 92
	headerMACAt  = HeaderLen - sha256.Size
	challengeLen = 16
	minKeyLen    = 32
)

var (
	helloMagic  = [4]byte{'P', 'E', 'P', 'G'}
	headerMagic = [4]byte{'P', 'E', 'P', 'W'}
)

// hello is what the gateway sends on a new peer connection.
type hello [HelloLen]byte

func newHello() (hello, error) {
	var h hello
	copy(h[:4], helloMagic[:])
	h[4] = version
	if _, err := rand.Read(h[8:]); err != nil {
		return h, fmt.Errorf("random challenge: %w", err)
	}
	return h, nil
}

// checkHello tells whether h comes from a gateway speaking this protocol.
func checkHello(h hello) error {
	if [4]byte(h[:4]) != helloMagic {
		return errors.New("not a pepsal gateway (bad hello)")
	}
	if h[4] != version {
		return fmt.Errorf("gateway speaks warm-path version %d, this terminal %d", h[4], version)
	}
	return nil
}

func (h hello) challenge() []byte { return h[8:] }

// header is what a warm connection carries before the client's bytes.
type header struct {
	Flags  uint8
	ToS    uint8
	Dst    netip.AddrPort // the client's original destination
	Client netip.AddrPort // the client, for --transparent and logs
}

// encode builds the header for the connection that sent h.
func (p header) encode(key []byte, h hello) ([HeaderLen]byte, error) {
	var b [HeaderLen]byte
	if !p.Dst.IsValid() || !p.Client.IsValid() {
		return b, errors.New("header needs a destination and a client")
	}
	dst, cli := p.Dst.Addr().Unmap(), p.Client.Addr().Unmap()
	if dst.Is4() != cli.Is4() {
		return b, errors.New("destination and client of different families")
	}
	copy(b[:4], headerMagic[:])
	b[4] = version
	b[5] = p.Flags
	b[6] = p.ToS
	b[7] = 6
	if dst.Is4() {
		b[7] = 4
	}
	a := dst.As16()
	copy(b[8:24], a[:])
	binary.BigEndian.PutUint16(b[24:26], p.Dst.Port())
	a = cli.As16()
	copy(b[26:42], a[:])
	binary.BigEndian.PutUint16(b[42:44], p.Client.Port())
	copy(b[44:60], h.challenge())
	copy(b[headerMACAt:], headerMAC(key, h, b[:headerMACAt]))
	return b, nil
}

// authError is a refused header with the reason it is counted under.
type authError struct{ reason, detail string }

func (e *authError) Error() string { return e.reason + ": " + e.detail }

// decodeHeader checks b against the hello sent on this connection: magic and
// version, challenge, MAC (constant time), then the fields.
func decodeHeader(key []byte, h hello, b []byte) (header, error) {
	var p header
	if len(b) < HeaderLen {
		return p, &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d header bytes", len(b), HeaderLen)}
	}
	b = b[:HeaderLen]
	if [4]byte(b[:4]) != headerMagic || b[4] != version {
		return p, &authError{report.AuthGarbage, "bad magic or version"}
	}
	if !hmac.Equal(b[44:60], h.challenge()) {
		return p, &authError{report.AuthReplay, "challenge of another connection"}
	}
	if !hmac.Equal(b[headerMACAt:], headerMAC(key, h, b[:headerMACAt])) {
		return p, &authError{report.AuthBadMAC, "MAC mismatch"}
	}
	// Authentic from here on: what is wrong is a terminal's bug, still refused.
	if b[5] != 0 {
		return p, &authError{report.AuthGarbage, fmt.Sprintf("unknown flags %#x", b[5])}
	}
	dst, cli := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[26:42]))
	switch b[7] {
	case 4:
		if !dst.Is4In6() || !cli.Is4In6() {
			return p, &authError{report.AuthGarbage, "family 4 with non-IPv4 addresses"}
		}
		dst, cli = dst.Unmap(), cli.Unmap()
	case 6:
		if dst.Is4In6() || cli.Is4In6() {
			return p, &authError{report.AuthGarbage, "family 6 with IPv4-mapped addresses"}
		}
	default:
		return p, &authError{report.AuthGarbage, fmt.Sprintf("family %d", b[7])}
	}
	dport, cport := binary.BigEndian.Uint16(b[24:26]), binary.BigEndian.Uint16(b[42:44])
	if dport == 0 || dst.IsUnspecified() || dst.IsMulticast() {
		return p, &authError{report.AuthGarbage, "bad destination"}
	}
	p.ToS = b[6]
	p.Dst = netip.AddrPortFrom(dst, dport)
	p.Client = netip.AddrPortFrom(cli, cport)
	return p, nil
}

func headerMAC(key []byte, h hello, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(h[:])
	m.Write(body)
	return m.Sum(nil)
}

// EncodeHeader builds a terminal's header for the connection whose
// gateway sent helloBytes: what a terminal sends, for tools and tests.
func EncodeHeader(key, helloBytes []byte, dst, client netip.AddrPort, tos uint8) ([]byte, error) {
	if len(helloBytes) != HelloLen {
		return nil, fmt.Errorf("hello of %d bytes, want %d", len(helloBytes), HelloLen)
	}
	h := hello(helloBytes)
	if err := checkHello(h); err != nil {
		return nil, err
	}
	b, err := header{ToS: tos, Dst: dst, Client: client}.encode(key, h)
	return b[:], err
}
