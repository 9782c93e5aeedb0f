// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/testbed"
)

// TestSplitIsSeenByServer: through pepsal the server talks to the router (the
// connection is split); without it, to the client. Status counts the split.
func testSplitIsSeenByServer(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.client {
			t.Fatalf("%s without pepsal: server saw %s, want the client %s", f.name, got, f.client)
		}
	}
	b.startPepsal()
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.routerServer {
			t.Errorf("%s through pepsal: server saw %s, want the router %s", f.name, got, f.routerServer)
		}
	}
	s := b.status()
	if !s.Attached || !s.Serving {
		t.Errorf("status: attached=%v serving=%v", s.Attached, s.Serving)
	}
	if got := s.counter("syn_diverted"); got != 2 {
		t.Errorf("syn_diverted = %d, want 2", got)
	}
	if got := s.counter("steer_assigned"); got != 2 {
		t.Errorf("steer_assigned = %d, want 2", got)
	}
	if s.Daemon == nil || s.Daemon.Stats.Accepted != 2 {
		t.Errorf("daemon accepted: %+v, want 2", s.Daemon)
	}
}

// transferServer reads a header {upload, download, seed}, hashes what the
// client uploads until EOF while sending `download` pseudo-random bytes, then
// reports the hash and count of what it received on the same connection
// after the download.
func transferServer(t *testing.T, ns *testbed.NS, addr string) {
	serve(t, ns, addr, serveTransfer)
}

const transferHeader = 24

func serveTransfer(c *net.TCPConn) {
	var hdr [transferHeader]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	answerExchange(c, int64(binary.BigEndian.Uint64(hdr[8:])), binary.BigEndian.Uint64(hdr[16:]))
}

// answerExchange is the server's side of checkExchange, once the header is
// read: it sends down bytes of the seed's stream while it hashes what
// arrives until EOF, then reports how much arrived and its hash, and
// half-closes.
func answerExchange(c *net.TCPConn, down int64, seed uint64) {
	recvDone := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		var rep [40]byte
		binary.BigEndian.PutUint64(rep[:8], uint64(n))
		copy(rep[8:], h.Sum(nil))
		recvDone <- rep[:]
	}()
	if _, err := io.Copy(c, io.LimitReader(newStream(seed^0xd0d0), down)); err != nil {
		return
	}
	// The report goes after the download, so it also proves ordering at the end.
	rep := <-recvDone
	c.Write(rep)
	c.CloseWrite()
}

// newStream is a deterministic byte stream, fast enough to not be the bottleneck.
func newStream(seed uint64) io.Reader {
	return &stream{r: rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), byte(seed >> 32), byte(seed >> 40)})}
}

type stream struct{ r *rand.ChaCha8 }

func (s *stream) Read(p []byte) (int, error) { return s.r.Read(p) }

func streamHash(seed uint64, n int64) []byte {
	h := sha256.New()
	io.Copy(h, io.LimitReader(newStream(seed), n))
	return h.Sum(nil)
}

// transfer uploads up bytes and downloads down bytes on one connection and
// checks both directions byte for byte (SHA-256 at both ends).
func transfer(ns *testbed.NS, addr string, up, down int64, seed uint64) error {
	c, err := dial(ns, addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	// A bound on a hung relay, not a speed test: an emulated guest (the
	// kernel matrix) moving 50 such transfers at once needs longer.
	_ = c.SetDeadline(time.Now().Add(kmatrix.Stretch(120 * time.Second)))
	var hdr [transferHeader]byte
	binary.BigEndian.PutUint64(hdr[0:], uint64(up))
	binary.BigEndian.PutUint64(hdr[8:], uint64(down))
	binary.BigEndian.PutUint64(hdr[16:], seed)
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	return checkExchange(c, up, down, seed)
}

// checkExchange is the client's side of transferServer's exchange, once
// the header is sent: it sends up bytes of the seed's stream and half-closes
// while it reads down bytes, then the server's report of what it received,
// then EOF; nil only if both directions arrived whole and intact.
func checkExchange(c *net.TCPConn, up, down int64, seed uint64) error {
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.LimitReader(newStream(seed), up))
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- err
	}()
	h := sha256.New()
	if n, err := io.CopyN(h, c, down); err != nil {
		return fmt.Errorf("download truncated at %d of %d: %w", n, down, err)
	}
	if !bytes.Equal(h.Sum(nil), streamHash(seed^0xd0d0, down)) {
		return fmt.Errorf("download of %d bytes corrupted", down)
	}
	var rep [40]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return fmt.Errorf("read server report: %w", err)
	}
	if err := <-sent; err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if n := int64(binary.BigEndian.Uint64(rep[:8])); n != up {
		return fmt.Errorf("upload truncated: server received %d of %d", n, up)
	}
	if !bytes.Equal(rep[8:], streamHash(seed, up)) {
		return fmt.Errorf("upload of %d bytes corrupted", up)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return fmt.Errorf("after the report: want EOF, got %d bytes, %v", n, err)
	}
	return nil
}

// TestConcurrentTransfersIntact: 50 concurrent connections, random sizes from
// 0 to 20 MB each way, IPv4 and IPv6 mixed, every byte checked at both ends.
func testConcurrentTransfersIntact(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		transferServer(t, b.Server, hostPort(f.server, 9000))
	}
	b.startPepsal()
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return int64(rng.IntN(10)) // 0..9 bytes, including empty
		default:
			return rng.Int64N(20 << 20)
		}
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		f := families[i%2]
		up, down := sizes(), sizes()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := transfer(b.Client, hostPort(f.server, 9000), up, down, uint64(i)+100); err != nil {
				errs <- fmt.Errorf("conn %d (%s, up %d, down %d): %w", i, f.name, up, down, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := b.status()
	if got := s.counter("syn_diverted"); got != n {
		t.Errorf("syn_diverted = %d, want %d (every transfer split)", got, n)
	}
	if s.Daemon == nil || s.Daemon.Stats.Completed != n {
		t.Errorf("daemon stats: %+v, want %d completed", s.Daemon, n)
	}
}

// TestHalfClose: the client sends its request and shuts down writing; the
// server reads to EOF and only then replies, which the client reads in full.
func testHalfClose(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	reply := bytes.Repeat([]byte("reply after EOF "), 64<<10) // 1 MiB
	for _, f := range families {
		serve(t, b.Server, hostPort(f.server, 7000), func(c *net.TCPConn) {
			req, err := io.ReadAll(c) // until the client's FIN
			if err != nil || string(req) != "request" {
				return
			}
			c.Write(reply)
		})
	}
	b.startPepsal()
	for _, f := range families {
		c := mustDial(t, b.Client, hostPort(f.server, 7000))
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: read reply: %v", f.name, err)
		}
		if !bytes.Equal(got, reply) {
			t.Errorf("%s: reply of %d bytes, want %d", f.name, len(got), len(reply))
		}
	}
	if s := b.status(); s.counter("syn_diverted") != 2 {
		t.Errorf("connections were not split: syn_diverted=%d", s.counter("syn_diverted"))
	}
}

// TestResetPropagates: an RST from either end reaches the other end as an RST.
func testResetPropagates(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	type accepted struct{ c *net.TCPConn }
	conns := make(chan accepted, 4)
	for _, f := range families {
		serve(t, b.Server, hostPort(f.server, 7100), func(c *net.TCPConn) {
			conns <- accepted{c}
			<-t.Context().Done() // the test resets and closes it
		})
	}
	b.startPepsal()
	for _, f := range families {
		for _, resetter := range []string{"client", "server"} {
			c := mustDial(t, b.Client, hostPort(f.server, 7100))
			var s *net.TCPConn
			select {
			case a := <-conns:
				s = a.c
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: server never got the connection", f.name)
			}
			// Exchange data first so both legs are fully established.
			c.Write([]byte("x"))
			if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			victim, killer := s, c
			if resetter == "server" {
				victim, killer = c, s
			}
			killer.SetLinger(0)
			killer.Close()
			victim.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := victim.Read(make([]byte, 10))
			if !isReset(err) {
				t.Errorf("%s, %s resets: other end read %v, want ECONNRESET", f.name, resetter, err)
			}
			victim.Close()
		}
	}
}

// TestUpstreamFailureResetsClient: refused, unreachable and silent upstreams
// give the client an RST, within the connect timeout, never a clean FIN.
func testUpstreamFailureResetsClient(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	// A silent server: the router resolves its address to the server's MAC,
	// and the server, which does not own the address, drops the SYNs.
	silent := map[string]string{"ipv4": "10.77.2.77", "ipv6": "fd77:2::77"}
	unreachable := map[string]string{"ipv4": "10.77.2.99", "ipv6": "fd77:2::99"}
	for _, f := range families {
		if err := b.staticNeighbor(b.Server, testbed.RouterServerIf, silent[f.name]); err != nil {
			t.Fatal(err)
		}
	}
	const timeout = 2 * time.Second
	b.startPepsal("--iface", testbed.RouterClientIf, "--connect-timeout", timeout.String())
	for _, f := range families {
		for _, tc := range []struct{ what, addr string }{
			{"refused", hostPort(f.server, 7999)},
			{"unreachable", hostPort(unreachable[f.name], 80)},
			{"silent", hostPort(silent[f.name], 80)},
		} {
			start := time.Now()
			n := 0
			c, err := dial(b.Client, tc.addr, 5*time.Second)
			if err == nil { // a fast refusal may reset the connection before the dial returns
				c.SetDeadline(time.Now().Add(timeout + 5*time.Second))
				n, err = c.Read(make([]byte, 1))
				c.Close()
			} else if !isReset(err) {
				t.Fatalf("%s %s: dial: %v (the proxy should accept first)", f.name, tc.what, err)
			}
			elapsed := time.Since(start)
			if n != 0 || !isReset(err) {
				t.Errorf("%s %s: read %d bytes, %v; want ECONNRESET", f.name, tc.what, n, err)
			}
			if elapsed > timeout+time.Second {
				t.Errorf("%s %s: reset after %s, want within the %s connect timeout", f.name, tc.what, elapsed, timeout)
			}
		}
	}
	if s := b.status(); s.Daemon == nil || s.Daemon.Stats.UpstreamFailed != 6 {
		t.Errorf("daemon stats %+v, want 6 upstream failures", s.Daemon)
	}
}

// staticNeighbor makes the router send frames for ip, out of its interface
// routerIf, to ns's eth0, where no one answers an ARP or ND for it.
func (b *bed) staticNeighbor(ns *testbed.NS, routerIf, ip string) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	mac := l.Attrs().HardwareAddr.String()
	proto := "-4"
	if net.ParseIP(ip).To4() == nil {
		proto = "-6"
	}
	out, err := b.Router.Command("ip", proto, "neigh", "replace", ip, "lladdr", mac, "dev", routerIf, "nud", "permanent").CombinedOutput()
	if err != nil {
		return fmt.Errorf("static neighbor %s: %v: %s", ip, err, out)
	}
	return nil
}
