// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/report"
)

var (
	keyA = strings.Repeat("a", 32)
	keyB = strings.Repeat("b", 40)
)

// TestParseKeys: a --peer-key file is one key (binary, or text of one
// word) or a key ring of `ID KEY [clients=...]` lines; a bad ring is
// refused in one line that names the line at fault.
func TestParseKeys(t *testing.T) {
	binary := append(bytes.Repeat([]byte{0xff}, 31), '\n')
	k, err := ParseKeys(binary)
	if err != nil || k.Ring || !bytes.Equal(k.Lookup("").Key, binary) {
		t.Fatalf("binary key: %+v, %v", k, err)
	}
	word := []byte(strings.Repeat("k3y!", 8) + "\n")
	if k, err := ParseKeys(word); err != nil || k.Ring || !bytes.Equal(k.Lookup("").Key, word) {
		t.Fatalf("a key of one word: %+v, %v", k, err)
	}
	ring := "# terminals\n\nsite-a " + keyA + "\r\n  site-b\t" + keyB + " clients=10.1.0.0/16,2001:db8:1::/48\n"
	k, err = ParseKeys([]byte(ring))
	if err != nil || !k.Ring || strings.Join(k.IDs(), ",") != "site-a,site-b" {
		t.Fatalf("ring: %+v, %v", k, err)
	}
	if a, b := k.Lookup("site-a"), k.Lookup("site-b"); string(a.Key) != keyA || len(a.Clients) != 0 || string(b.Key) != keyB ||
		!b.AllowsClient(netip.MustParseAddr("10.1.2.3")) || !b.AllowsClient(netip.MustParseAddr("::ffff:10.1.2.3")) ||
		b.AllowsClient(netip.MustParseAddr("10.2.0.1")) || !b.AllowsClient(netip.MustParseAddr("2001:db8:1:5::1")) {
		t.Fatalf("ring keys: %+v %+v", a, b)
	}
	if _, err := k.Own(); err == nil || !strings.Contains(err.Error(), "holds 2 keys") {
		t.Errorf("a terminal with a ring of two: %v", err)
	}
	if own, err := mustKeys(t, "site-a "+keyA+"\n").Own(); err != nil || own.ID != "site-a" {
		t.Errorf("a terminal's own line: %+v, %v", own, err)
	}
	for _, c := range []struct{ data, want string }{
		{"short", "holds 5 bytes, want at least 32"},
		{"site-a " + keyA + "\nsite-a " + keyB, "line 2: id site-a is on line 1 already"},
		{"site-a " + keyA + "\nsite-b short", "line 2: the key of site-b is 5 bytes, want at least 32"},
		{"site/a " + keyA, "line 1: bad id \"site/a\""},
		{strings.Repeat("x", 33) + " " + keyA, "line 1: bad id"},
		{"site-a " + keyA + "\njust-one-field", "line 2: want `ID KEY [clients=PREFIX,...]`, found 1 field"},
		{"site-a " + keyA + " clients=10.0.0.300/8", "line 1: site-a: bad clients= prefix \"10.0.0.300/8\""},
		{"site-a " + keyA + " clients=", "line 1: site-a: bad clients= prefix \"\""},
		{"site-a " + keyA + " dst=10.0.0.0/8", "line 1: site-a: unknown field \"dst=10.0.0.0/8\""},
	} {
		_, err := ParseKeys([]byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", c.data, err, c.want)
		}
	}
}

func mustKeys(t *testing.T, data string) *Keys {
	t.Helper()
	k, err := ParseKeys([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeRing writes a key file (mode 600) at path, replacing it whole as
// an editor that renames would.
func writeRing(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// authOn authenticates a new connection to b's gateway with key of id:
// it returns the connection and its hello when welcomed, nil when the
// gateway closed it instead.
func (b *gatewayBed) authOn(t *testing.T, key []byte, id string) (*net.TCPConn, hello) {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, b.g.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(fuzzDeadline))
	var h hello
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("no hello: %v", err)
	}
	a, err := encodeAuth(key, id, h)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(a[:])
	var w [WelcomeLen]byte
	if _, err := io.ReadFull(c, w[:]); err != nil {
		return nil, h
	}
	if err := checkWelcome(key, h, a[:], w[:]); err != nil {
		t.Fatal(err)
	}
	return c, h
}

// gone tells whether the gateway closed or reset c.
func gone(c *net.TCPConn) bool {
	_ = c.SetReadDeadline(time.Now().Add(fuzzDeadline))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !isTimeout(err)
}

// terminal is the per-terminal part of s for id.
func terminal(s report.PeerGatewayStats, id string) report.PeerTerminalStats {
	for _, ts := range s.Terminals {
		if ts.ID == id {
			return ts
		}
	}
	return report.PeerTerminalStats{}
}

// TestGatewayKeyring: with a key ring each terminal authenticates with
// its own key and id: another id's key, an id the file never held, an auth
// replayed on another connection are refused (counted by id where the id
// is the file's); a header naming a client outside the terminal's clients=
// is refused. Removing a key from the file (no restart) closes the pooled
// connections of that terminal and refuses its new ones, while the other
// keeps working; a file that no longer loads changes nothing.
func TestGatewayKeyring(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring")
	ring := "site-a " + keyA + "\nsite-b " + keyB + " clients=10.9.0.0/16\n"
	writeRing(t, path, ring)
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	b := newGatewayBed(t, keys, path)
	dst, cli := netip.MustParseAddrPort("10.0.0.1:443"), netip.MustParseAddrPort("192.168.1.2:5000")
	send := func(c *net.TCPConn, key []byte, h hello) {
		hb, err := header{Dst: dst, Client: cli}.encode(key, h)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(hb[:])
	}
	c, h := b.authOn(t, []byte(keyA), "site-a")
	send(c, []byte(keyA), h)
	if fl := <-b.up.flows; fl.Client != cli || fl.Dst != dst {
		t.Fatalf("site-a's flow: %+v", fl)
	}
	if c, h := b.authOn(t, []byte(keyB), "site-b"); c == nil {
		t.Fatal("site-b not welcomed")
	} else if send(c, []byte(keyB), h); !gone(c) {
		t.Error("site-b named a client outside its clients= and was served")
	}
	if c, _ := b.authOn(t, []byte(keyB), "site-a"); c != nil {
		t.Error("site-a authenticated with site-b's key")
	}
	if c, _ := b.authOn(t, []byte(keyA), "nobody"); c != nil {
		t.Error("an id the file never held authenticated")
	}
	pooled, _ := b.authOn(t, []byte(keyB), "site-b")
	if pooled == nil {
		t.Fatal("site-b not welcomed")
	}
	// Revoke site-b: its pooled connection goes, its new ones are refused.
	writeRing(t, path, "site-a "+keyA+"\n")
	b.g.terms.reload()
	if !gone(pooled) {
		t.Error("site-b's pooled connection outlived its key")
	}
	if c, _ := b.authOn(t, []byte(keyB), "site-b"); c != nil {
		t.Error("site-b authenticated after its key was removed")
	}
	// A broken file keeps the keys in force.
	writeRing(t, path, "site-a "+keyA+"\nsite-c short\n")
	b.g.terms.reload()
	if c, _ := b.authOn(t, []byte(keyA), "site-a"); c == nil {
		t.Error("site-a refused after a broken reload")
	}
	s := b.g.Stats()
	ta, tb := terminal(s, "site-a"), terminal(s, "site-b")
	if s.Refused[report.AuthUnknownID] != 1 || s.Refused[report.AuthRevoked] != 2 || s.Refused[report.AuthClientDeny] != 1 ||
		ta.Refused[report.AuthBadMAC] != 1 || ta.Served != 1 || ta.Revoked || !tb.Revoked || tb.RevokedClosed != 1 ||
		tb.Refused[report.AuthRevoked] != 1 || tb.Refused[report.AuthClientDeny] != 1 || len(tb.Clients) != 0 ||
		s.KeyReloads != 1 || s.KeyReloadFailures != 1 || !strings.Contains(s.KeyError, "line 2") {
		t.Errorf("stats %+v", s)
	}
	// Replayed on another connection: refused, under site-a.
	c1, _ := net.DialTCP("tcp", nil, b.g.Addr().(*net.TCPAddr))
	defer c1.Close()
	var h1 hello
	io.ReadFull(c1, h1[:])
	a, _ := encodeAuth([]byte(keyA), "site-a", h)
	c1.Write(a[:])
	if !gone(c1) {
		t.Error("an auth of another connection passed")
	}
	// The gateway counts the refusal after it closes: wait for the count.
	n := uint64(0)
	for end := time.Now().Add(5 * time.Second); n != 1 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		n = terminal(b.g.Stats(), "site-a").Refused[report.AuthReplay]
	}
	if n != 1 {
		t.Errorf("site-a's replays: %d, want 1", n)
	}
}

// FuzzParseKeys: any file content is a single key, a key ring or a
// one-line error, never a panic; a ring holds valid ids (each once) with
// keys of at least 32 bytes; a single key is the content itself.
func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(strings.Repeat("k3y!", 8)))
	f.Add(append(bytes.Repeat([]byte{0}, 32), '\n'))
	f.Add([]byte("# ring\nsite-a " + keyA + "\nsite-b " + keyB + " clients=10.0.0.0/8,::/0\n"))
	f.Add([]byte("site-a " + keyA + "\nsite-a " + keyA))
	f.Add([]byte("site-a short clients=1.2.3.4/33"))
	f.Add([]byte("a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKeys(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
			return
		}
		if !k.Ring {
			if ids := k.IDs(); len(ids) != 1 || ids[0] != "" || !bytes.Equal(k.Lookup("").Key, data) {
				t.Fatalf("single key %+v of %q", k, data)
			}
			return
		}
		seen := map[string]bool{}
		for _, id := range k.IDs() {
			tk := k.Lookup(id)
			if seen[id] || id == "" || CheckID(id) != nil || tk == nil || tk.ID != id || len(tk.Key) < minKeyLen {
				t.Fatalf("ring %q: id %q -> %+v", data, id, tk)
			}
			seen[id] = true
		}
	})
}

// TestKeysReloadOnce: a key file that does not load, or is gone, is tried
// once per version, not on every look; the keys before stay in force; a
// new version that loads takes over.
func TestKeysReloadOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring")
	writeRing(t, path, "site-a "+keyA+"\n")
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	terms := newTerminals(keys, path, keys.stamp, slog.New(slog.NewTextHandler(io.Discard, nil)))
	terms.reload()
	if terms.reloads != 0 || terms.failed != 0 {
		t.Fatalf("an unchanged file was reloaded: %d, %d failed", terms.reloads, terms.failed)
	}
	writeRing(t, path, "site-a short\n")
	terms.reload()
	terms.reload()
	os.Remove(path)
	terms.reload()
	terms.reload()
	if terms.failed != 2 || terms.reloads != 0 || terms.keys.Lookup("site-a") == nil {
		t.Fatalf("broken, then gone: %d failed, %d reloads, keys %v", terms.failed, terms.reloads, terms.keys.IDs())
	}
	writeRing(t, path, "site-b "+keyB+"\n")
	terms.reload()
	if _, err := terms.lookup("site-a"); reason(err) != report.AuthRevoked || terms.keys.Lookup("site-b") == nil || terms.lastErr != "" {
		t.Fatalf("after a good version: site-a %v, keys %v, error %q", err, terms.keys.IDs(), terms.lastErr)
	}
}
