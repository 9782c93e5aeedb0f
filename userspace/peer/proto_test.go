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
	copy(mixed[headerMACAt:], headerMAC(testKey, h, mixed[:headerMACAt]))
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
	v2 := h
	v2[4] = 2
	if err := checkHello(v2); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("version 2 hello: %v", err)
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
	if k, err := LoadKey(good); err != nil || len(k) != 32 {
		t.Fatalf("good key: %d bytes, %v", len(k), err)
	}
	for _, c := range []struct{ path, want string }{
		{"", "required"},
		{filepath.Join(dir, "missing"), "no such file"},
		{write("short", bytes.Repeat([]byte{1}, 31), 0o600), "at least 32"},
		{write("world", bytes.Repeat([]byte{1}, 32), 0o604), "group or others"},
		{write("group", bytes.Repeat([]byte{1}, 32), 0o640), "group or others"},
		{dir, "not a regular file"},
	} {
		_, err := LoadKey(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", c.path, err, c.want)
		}
	}
}
