// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/userspace/report"
)

var testKey = bytes.Repeat([]byte{7}, 32)

func mustHello(t *testing.T) hello {
	t.Helper()
	h, err := newHello()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkHello(h); err != nil {
		t.Fatal(err)
	}
	return h
}

func reason(err error) string {
	var ae *authError
	if errors.As(err, &ae) {
		return ae.reason
	}
	return ""
}

func TestPeerHeaderRoundTrip(t *testing.T) {
	h := mustHello(t)
	for _, hdr := range []header{
		{ToS: 0x28, Dst: netip.MustParseAddrPort("10.0.0.1:443"), Client: netip.MustParseAddrPort("192.168.1.2:50000")},
		{Dst: netip.MustParseAddrPort("[2001:db8::1]:80"), Client: netip.MustParseAddrPort("[fd00::2]:1234")},
		// IPv4-mapped input comes out as plain IPv4.
		{Dst: netip.MustParseAddrPort("[::ffff:10.0.0.1]:443"), Client: netip.MustParseAddrPort("[::ffff:10.0.0.2]:1")},
	} {
		b, err := hdr.encode(testKey, h)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeHeader(testKey, h, b[:])
		if err != nil {
			t.Fatalf("%v: %v", hdr, err)
		}
		want := header{ToS: hdr.ToS, Dst: netip.AddrPortFrom(hdr.Dst.Addr().Unmap(), hdr.Dst.Port()),
			Client: netip.AddrPortFrom(hdr.Client.Addr().Unmap(), hdr.Client.Port())}
		if got != want {
			t.Errorf("decoded %+v, want %+v", got, want)
		}
	}
}

func TestPeerHeaderRefusals(t *testing.T) {
	h := mustHello(t)
	hdr := header{Dst: netip.MustParseAddrPort("10.0.0.1:443"), Client: netip.MustParseAddrPort("192.168.1.2:50000")}
	good, err := hdr.encode(testKey, h)
	if err != nil {
		t.Fatal(err)
	}
	other := mustHello(t)
	wrongKey, _ := hdr.encode(bytes.Repeat([]byte{8}, 32), h)
	flipped := good
	flipped[25] ^= 1 // the destination port, after the MAC was made
	mixed := good
	mixed[7] = 6 // IPv4-mapped addresses under family 6, MAC'd right
	copy(mixed[headerMACAt:], mac(testKey, h[:], mixed[:headerMACAt]))
	for _, c := range []struct {
		name string
		h    hello
		b    []byte
		want string
	}{
		{"replayed on another connection", other, good[:], report.AuthReplay},
		{"wrong key", h, wrongKey[:], report.AuthBadMAC},
		{"altered", h, flipped[:], report.AuthBadMAC},
		{"garbage", h, bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8), report.AuthGarbage},
		{"short", h, good[:50], report.AuthIncomplete},
		{"family mismatch", h, mixed[:], report.AuthGarbage},
	} {
		if _, err := decodeHeader(testKey, c.h, c.b); reason(err) != c.want {
			t.Errorf("%s: %v, want reason %s", c.name, err, c.want)
		}
	}
	// A hello that is not a pepsal gateway's, or of another version.
	var bad hello
	copy(bad[:], "SSH-2.0-OpenSSH_9.2p1 Debian")
	if checkHello(bad) == nil {
		t.Error("an SSH banner passed for a gateway's hello")
	}
	v1 := h
	v1[4] = 1
	if err := checkHello(v1); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("version 1 hello: %v", err)
	}
}

func TestLoadPeerKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", bytes.Repeat([]byte{1}, 32), 0o600)
	if k, err := LoadKeys(good); err != nil || k.Ring || len(k.Lookup("").Key) != 32 {
		t.Fatalf("good key: %+v, %v", k, err)
	}
	for _, c := range []struct{ path, want string }{
		{"", "required"},
		{filepath.Join(dir, "missing"), "no such file"},
		{write("short", bytes.Repeat([]byte{1}, 31), 0o600), "at least 32"},
		{write("world", bytes.Repeat([]byte{1}, 32), 0o604), "group or others"},
		{write("group", bytes.Repeat([]byte{1}, 32), 0o640), "group or others"},
		{dir, "not a regular file"},
	} {
		_, err := LoadKeys(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", c.path, err, c.want)
		}
	}
}

// TestPeerAuthMessage: an auth message passes on the connection it was made
// for, with the key of its id, and nowhere else: replayed on another
// connection, made with another key, of another version, with a bad id or
// bytes after the id, it is refused under its reason; the gateway's welcome
// proves its key back.
func TestPeerAuthMessage(t *testing.T) {
	h, other := mustHello(t), mustHello(t)
	for _, id := range []string{"", "site-1", "a.b_c-D9", strings.Repeat("x", MaxIDLen)} {
		b, err := encodeAuth(testKey, id, h)
		if err != nil {
			t.Fatalf("id %q: %v", id, err)
		}
		got, err := authID(b[:])
		if err != nil || got != id {
			t.Fatalf("id %q read as %q, %v", id, got, err)
		}
		if err := checkAuth(testKey, h, b[:]); err != nil {
			t.Fatalf("id %q: %v", id, err)
		}
		w := welcome(testKey, h, b[:])
		if err := checkWelcome(testKey, h, b[:], w[:]); err != nil {
			t.Fatalf("welcome: %v", err)
		}
		if checkWelcome(bytes.Repeat([]byte{8}, 32), h, b[:], w[:]) == nil {
			t.Fatal("a welcome passed with another key")
		}
	}
	for _, id := range []string{"a b", "é", "x/y", strings.Repeat("x", MaxIDLen+1)} {
		if _, err := encodeAuth(testKey, id, h); err == nil {
			t.Errorf("id %q encoded", id)
		}
	}
	good, _ := encodeAuth(testKey, "site-1", h)
	v1 := good
	v1[4] = 1
	padded := good
	padded[24+len("site-1")] = 'x' // a byte after the id, under its length
	long := good
	long[5] = MaxIDLen + 1
	badChar := good
	badChar[24] = ' '
	for _, c := range []struct {
		name string
		h    hello
		b    []byte
		want string
	}{
		{"replayed on another connection", other, good[:], report.AuthReplay},
		{"wrong key", h, func() []byte { b, _ := encodeAuth(bytes.Repeat([]byte{8}, 32), "site-1", h); return b[:] }(), report.AuthBadMAC},
		{"version 1", h, v1[:], report.AuthVersion},
		{"bytes after the id", h, padded[:], report.AuthGarbage},
		{"id too long", h, long[:], report.AuthGarbage},
		{"bad id byte", h, badChar[:], report.AuthGarbage},
		{"a header", h, bytes.Repeat([]byte("PEPW"), 30), report.AuthGarbage},
		{"short", h, good[:40], report.AuthIncomplete},
	} {
		err := func() error {
			if _, err := authID(c.b); err != nil {
				return err
			}
			return checkAuth(testKey, c.h, c.b)
		}()
		if reason(err) != c.want {
			t.Errorf("%s: %v, want reason %s", c.name, err, c.want)
		}
	}
}
