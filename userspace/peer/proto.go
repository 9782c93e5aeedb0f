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
// hello with a fresh random challenge. The terminal answers at once with an
// auth message that proves it holds the key (of its key id) for this
// connection's challenge; the gateway answers with a welcome that proves the
// same key back. Only then does the terminal keep the connection idle in its
// pool, and only then does the gateway hold it for long: a connection that
// does not authenticate within seconds is cut. When a client flow takes the
// connection, the terminal sends one header, MAC'd over the hello and the
// header, followed by the client's bytes. Every message is valid on one
// connection only (the challenge is that connection's), so a captured one
// cannot be replayed, with no clock to agree on and no replay cache to bound.
//
//	hello   (24 bytes): magic "PEPG", version, 3 zero bytes, challenge[16]
//	auth    (88 bytes): magic "PEPA", version, id length, 2 zero bytes,
//	                    challenge[16] (echo), id[32] (zero padded), MAC[32]
//	welcome (36 bytes): magic "PEPK", MAC[32]
//	header  (92 bytes): magic "PEPW", version, flags, ToS, family (4|6),
//	                    dst addr[16] port[2], client addr[16] port[2],
//	                    challenge[16] (echo), MAC[32]
//
// auth's MAC = HMAC-SHA256(key, hello || auth[:56]); welcome's MAC =
// HMAC-SHA256(key, hello || auth || "PEPK"); the header's MAC =
// HMAC-SHA256(key, hello || header[:60]). Each MAC'd input starts with the
// hello and then its own magic: none can pass for another. The id names
// the terminal's key (0 to 32 bytes of A-Z a-z 0-9 . _ -; empty: the one
// key of a single-key file). Addresses are IPv4-mapped when family is 4;
// ports are big endian.
//
// Version 1 had no auth and no welcome: a terminal of version 1 reads a
// version 2 hello, says so in its log and closes; the gateway counts it as
// closed before authenticating. Both ends are upgraded together.
//
// HelloLen, AuthLen, WelcomeLen and HeaderLen are exported for tools and
// tests that speak the protocol (EncodeAuth, EncodeHeader).
const (
	version      = 2
	HelloLen     = 24
	AuthLen      = 88
	WelcomeLen   = 36
	HeaderLen    = 92
	authMACAt    = AuthLen - sha256.Size
	headerMACAt  = HeaderLen - sha256.Size
	challengeLen = 16
	minKeyLen    = 32
	// MaxIDLen is the longest key id.
	MaxIDLen = 32
)

var (
	helloMagic   = [4]byte{'P', 'E', 'P', 'G'}
	authMagic    = [4]byte{'P', 'E', 'P', 'A'}
	welcomeMagic = [4]byte{'P', 'E', 'P', 'K'}
	headerMagic  = [4]byte{'P', 'E', 'P', 'W'}
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

// CheckID tells whether id may name a terminal's key: 0 to MaxIDLen
// bytes of A-Z a-z 0-9 . _ - (it goes into logs and status as it is).
func CheckID(id string) error {
	if len(id) > MaxIDLen {
		return fmt.Errorf("key id of %d bytes, at most %d", len(id), MaxIDLen)
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("key id %q: only A-Z a-z 0-9 . _ - may name a key", id)
		}
	}
	return nil
}

// encodeAuth builds the terminal's auth message, for key id and its key,
// on the connection that sent h.
func encodeAuth(key []byte, id string, h hello) ([AuthLen]byte, error) {
	var b [AuthLen]byte
	if err := CheckID(id); err != nil {
		return b, err
	}
	copy(b[:4], authMagic[:])
	b[4] = version
	b[5] = byte(len(id))
	copy(b[8:24], h.challenge())
	copy(b[24:56], id)
	copy(b[authMACAt:], mac(key, h[:], b[:authMACAt]))
	return b, nil
}

// authID reads the key id an auth message names, checking its form only:
// the key of that id checks the rest (checkAuth).
func authID(b []byte) (string, error) {
	if len(b) < AuthLen {
		return "", &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d auth bytes", len(b), AuthLen)}
	}
	if [4]byte(b[:4]) != authMagic {
		return "", &authError{report.AuthGarbage, "bad auth magic"}
	}
	if b[4] != version {
		return "", &authError{report.AuthVersion, fmt.Sprintf("terminal speaks warm-path version %d, this gateway %d: upgrade both ends", b[4], version)}
	}
	n := int(b[5])
	if n > MaxIDLen || b[6] != 0 || b[7] != 0 {
		return "", &authError{report.AuthGarbage, "bad auth id length or reserved bytes"}
	}
	id := string(b[24 : 24+n])
	for _, c := range b[24+n : 56] {
		if c != 0 {
			return "", &authError{report.AuthGarbage, "auth id not zero padded"}
		}
	}
	if err := CheckID(id); err != nil {
		return "", &authError{report.AuthGarbage, err.Error()}
	}
	return id, nil
}

// checkAuth checks an auth message (whose form authID checked) against the
// hello sent on this connection and the key of its id: challenge, then MAC
// (constant time).
func checkAuth(key []byte, h hello, b []byte) error {
	if !hmac.Equal(b[8:24], h.challenge()) {
		return &authError{report.AuthReplay, "auth of another connection"}
	}
	if !hmac.Equal(b[authMACAt:AuthLen], mac(key, h[:], b[:authMACAt])) {
		return &authError{report.AuthBadMAC, "auth MAC mismatch"}
	}
	return nil
}

// welcome is the gateway's answer to an authentic auth message: proof that
// it holds the same key, bound to this connection.
func welcome(key []byte, h hello, auth []byte) [WelcomeLen]byte {
	var w [WelcomeLen]byte
	copy(w[:4], welcomeMagic[:])
	copy(w[4:], mac(key, h[:], auth[:AuthLen], welcomeMagic[:]))
	return w
}

// checkWelcome tells whether w is the gateway's welcome for auth.
func checkWelcome(key []byte, h hello, auth []byte, w []byte) error {
	want := welcome(key, h, auth)
	if !hmac.Equal(w, want[:]) {
		return errors.New("the gateway's welcome does not prove our key: another key, or not a pepsal gateway")
	}
	return nil
}

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
	copy(b[headerMACAt:], mac(key, h[:], b[:headerMACAt]))
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
	if !hmac.Equal(b[headerMACAt:], mac(key, h[:], b[:headerMACAt])) {
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

// mac is HMAC-SHA256 of key over parts, one after the other.
func mac(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// EncodeAuth builds a terminal's auth message, for key id and its key, on
// the connection whose gateway sent helloBytes: what a terminal sends right
// after the hello, for tools and tests.
func EncodeAuth(key []byte, id string, helloBytes []byte) ([]byte, error) {
	if len(helloBytes) != HelloLen {
		return nil, fmt.Errorf("hello of %d bytes, want %d", len(helloBytes), HelloLen)
	}
	h := hello(helloBytes)
	if err := checkHello(h); err != nil {
		return nil, err
	}
	b, err := encodeAuth(key, id, h)
	return b[:], err
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
