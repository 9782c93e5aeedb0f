// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/report"
)

// Who may use the gateway's peer port (issue #22): each connection
// authenticates at once, with its terminal's key, and the port holds no
// more than its limits whoever connects.

// peerClient speaks the protocol by hand from ns: it dials the gateway and
// reads its hello.
func peerClient(t *testing.T, ns *testbed.NS) (*net.TCPConn, []byte) {
	t.Helper()
	c, err := dial(ns, peerGatewayAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the gateway's peer port: %v", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, peer.HelloLen)
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatalf("read hello: %v", err)
	}
	return c, hello
}

// peerAuthed is peerClient authenticated with key of id: it returns the
// connection, welcomed, its hello and the auth it sent.
func peerAuthed(t *testing.T, ns *testbed.NS, key []byte, id string) (*net.TCPConn, []byte, []byte) {
	t.Helper()
	c, hello := peerClient(t, ns)
	auth, err := peer.EncodeAuth(key, id, hello)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(auth)
	if _, err := io.ReadFull(c, make([]byte, peer.WelcomeLen)); err != nil {
		t.Fatalf("no welcome for key id %q: %v", id, err)
	}
	return c, hello, auth
}

// closedByGateway tells whether the gateway reset or closed c without a byte.
func closedByGateway(c *net.TCPConn, within time.Duration) error {
	c.SetReadDeadline(time.Now().Add(within))
	n, err := c.Read(make([]byte, 1))
	if n == 0 && (err == io.EOF || isReset(err)) {
		return nil
	}
	return fmt.Errorf("read %d bytes, %v: not closed", n, err)
}

// TestPeerAuth: the gateway's peer port is no open proxy. Wrong key,
// replayed auth, replayed header, garbage, a header where the auth goes
// and a header that never completes are closed without dialing anything
// (the server sees only the one legitimate connection) and counted by
// reason.
func TestPeerAuth(t *testing.T) {
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	var seen atomic.Int32
	serve(t, topo.Server, hostPort(testbed.TPServerV4, 7400), func(c *net.TCPConn) {
		seen.Add(1)
		io.Copy(c, c)
	})
	startPeerGateway(t, defaultSuite(), topo, key)
	dst := netip.MustParseAddrPort(hostPort(testbed.TPServerV4, 7400))
	cli := netip.MustParseAddrPort(hostPort(testbed.TPClientV4, 40000))

	// A legitimate auth and header, captured, work once.
	c, hello, auth := peerAuthed(t, topo.Terminal, testKey(), "")
	hdr, err := peer.EncodeHeader(testKey(), hello, dst, cli, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append(append([]byte{}, hdr...), "echo me"...))
	got := make([]byte, 7)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "echo me" {
		t.Fatalf("legitimate header: echo %q, %v", got, err)
	}
	c.Close()

	refused := func(what string, c *net.TCPConn, b []byte) {
		t.Helper()
		c.Write(b)
		if err := closedByGateway(c, 15*time.Second); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	c, _, _ = peerAuthed(t, topo.Terminal, testKey(), "")
	refused("header replayed on an authenticated connection", c, hdr)
	c, _ = peerClient(t, topo.Terminal)
	refused("auth replayed", c, auth)
	c, hello = peerClient(t, topo.Terminal)
	bad, _ := peer.EncodeAuth(bytes.Repeat([]byte("wrong key"), 4), "", hello)
	refused("wrong key", c, bad)
	c, _ = peerClient(t, topo.Terminal)
	refused("garbage", c, []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	c, hello = peerClient(t, topo.Terminal)
	asV1, _ := peer.EncodeHeader(testKey(), hello, dst, cli, 0)
	refused("a header where the auth goes (protocol version 1)", c, asV1)
	// A header that never completes: closed after the header timeout.
	c, hello, _ = peerAuthed(t, topo.Terminal, testKey(), "")
	good, _ := peer.EncodeHeader(testKey(), hello, dst, cli, 0)
	refused("incomplete header", c, good[:40])

	s := peerStatus(t, topo.Gateway).Daemon.Peer.Gateway
	for reason, want := range map[string]uint64{report.AuthReplay: 2, report.AuthBadMAC: 1, report.AuthGarbage: 2, report.AuthIncomplete: 1} {
		if s.Refused[reason] != want {
			t.Errorf("refused[%s] = %d, want %d (%+v)", reason, s.Refused[reason], want, s.Refused)
		}
	}
	if s.Served != 1 {
		t.Errorf("served %d, want 1", s.Served)
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the server saw %d connections, want only the legitimate one", n)
	}
}

// TestPeerNotAllowed: a terminal outside --peer-allow is reset at accept,
// before any hello, and counted.
func TestPeerNotAllowed(t *testing.T) {
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, defaultSuite(), topo, key, "--peer-allow", "192.0.2.0/24", "--peer-allow", "fd00:99::/64")
	c, err := dial(topo.Terminal, peerGatewayAddr, 5*time.Second)
	if err == nil { // the reset may beat the dial's return
		err = closedByGateway(c, 10*time.Second)
		c.Close()
	} else if isReset(err) {
		err = nil
	}
	if err != nil {
		t.Errorf("terminal not allowed: %v", err)
	}
	if s := peerStatus(t, topo.Gateway).Daemon.Peer.Gateway; s.Refused[report.AuthNotAllowed] != 1 || s.Served != 0 {
		t.Errorf("gateway %+v: want one refused as not_allowed", s)
	}
}

// processRSS is a process's own resident memory (VmRSS), not the machine's.
func processRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	rss := parseVmRSS(string(data))
	if rss == 0 {
		t.Fatalf("/proc/%d/status: no VmRSS", pid)
	}
	return rss
}

// flood opens n connections to the gateway's peer port from ns, sending
// first (nil: nothing) on each, and holds them until the test ends.
func flood(t *testing.T, ns *testbed.NS, n int, first []byte) {
	t.Helper()
	var mu sync.Mutex
	var held []*net.TCPConn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	var wg sync.WaitGroup
	var failed atomic.Int32
	const workers = 20
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				c, err := dial(ns, peerGatewayAddr, 10*time.Second)
				if err != nil {
					if failed.Add(1) == 1 {
						t.Logf("first failed dial: %v", err)
					}
					continue
				}
				if first != nil {
					c.Write(first) // may meet the reset of a refused connection
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("flood of %d connections (first bytes %q): %d held, %d reset while dialing", n, first, len(held), failed.Load())
}

// TestPeerPortFlood: 1,000 silent connections and 1,000 that send one byte
// and go silent, all from one address, neither lock a terminal out of the
// gateway nor cost the gateway memory. The terminal keeps its pool and its
// flows (every one intact and on a warm connection, no dial of its pool
// refused), the gateway daemon's own RSS (/proc/PID/status, not the
// machine's memory) grows by less than 10 MiB at its peak, and the
// per-source cap and the auth deadline count what they cut.
func TestPeerPortFlood(t *testing.T) {
	const pool = 4
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	gw := startPeerGateway(t, defaultSuite(), topo, key)
	startPeerTerminal(t, defaultSuite(), topo, key, pool)
	poolFull := func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool }
	waitPeer(t, topo.Terminal, "pool full", poolFull)
	server := hostPort(testbed.TPServerV4, 9000)
	transferServer(t, topo.Server, server)
	// Each flow waits for a full pool: it must ride a warm connection.
	flows := func(n int, seed uint64) {
		for i := range n {
			waitPeer(t, topo.Terminal, "pool full", poolFull)
			if err := transfer(topo.Client, server, 64<<10, 256<<10, seed+uint64(i)); err != nil {
				t.Errorf("flow %d: %v", seed+uint64(i), err)
			}
		}
	}
	flows(4, 0) // the daemons' steady state before the baseline
	before := processRSS(t, gw.PID())
	p0 := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool

	var peak atomic.Int64
	peak.Store(before)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", gw.PID())); err == nil {
				if rss := parseVmRSS(string(data)); rss > peak.Load() {
					peak.Store(rss)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-sampled
	}()

	// The silent ones first: the per-source cap lets 64 of them wait
	// and refuses the rest; the auth deadline cuts those 64 within
	// seconds. Then the ones that send a byte, which may begin an auth.
	deadlineCut := func(n uint64) report.PeerGatewayStats {
		return *waitPeer(t, topo.Gateway, fmt.Sprintf("%d connections cut at the auth deadline", n), func(p report.PeerStats) bool {
			return p.Gateway.Refused[report.AuthDeadline] >= n
		}).Gateway
	}
	flood(t, topo.Server, 1000, nil)
	flows(4, 100) // while they are held
	t.Logf("gateway daemon RSS with the silent flood held: %d KiB (%d KiB before)", processRSS(t, gw.PID())>>10, before>>10)
	deadlineCut(peer.PerSourceMax)
	flood(t, topo.Server, 1000, []byte("P"))
	flows(4, 200)
	s := deadlineCut(2 * peer.PerSourceMax)
	flows(4, 300) // after it, the flood's connections still open at their end
	close(stop)
	<-sampled

	grew := peak.Load() - before
	t.Logf("gateway daemon RSS: %d KiB before, peak %d KiB (+%d KiB); refused %v", before>>10, peak.Load()>>10, grew>>10, s.Refused)
	if grew >= 10<<20 {
		t.Errorf("the gateway daemon's RSS grew by %d KiB under the flood, want < 10 MiB", grew>>10)
	}
	if s.Refused[report.AuthPerSource] < 1000 {
		t.Errorf("%d connections refused by the per-source cap, want most of the 2000 (%v)", s.Refused[report.AuthPerSource], s.Refused)
	}
	p := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool
	if p.DialFailures != p0.DialFailures || p.FallbackDown != p0.FallbackDown || p.Taken-p0.Taken != 12 {
		t.Errorf("terminal's pool before the flood %+v, after %+v: want its 12 flows on warm connections, no dial refused", p0, p)
	}
}

// parseVmRSS reads VmRSS, in bytes, from a /proc/PID/status text (0: none).
func parseVmRSS(status string) int64 {
	for _, l := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestPeerGatewayFull: the gateway's admission limit (--max-conns) holds
// warm flows too. Once its table is full of warm flows it takes no new warm
// connection (full), and the terminal's flows still work (fast open,
// unsplit at the gateway); once the flows end the pool fills again.
func TestPeerGatewayFull(t *testing.T) {
	const pool = 2
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, defaultSuite(), topo, key, "--max-conns", "2")
	startPeerTerminal(t, defaultSuite(), topo, key, pool)
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool.Idle == pool })
	addr := hostPort(testbed.TPServerV4, 7500)
	peerServer(t, topo.Server, addr)
	// Three held flows: the pool's refill after the third (at least)
	// meets a full table.
	var held []*net.TCPConn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3 {
		c := mustDial(t, topo.Client, addr)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if line, err := readLine(c); err != nil || line != testbed.TPClientV4 && line != testbed.GatewayServerV4 {
			t.Fatalf("held flow: %q, %v", line, err)
		}
		held = append(held, c)
	}
	waitPeer(t, topo.Gateway, "new warm connections refused at the limit", func(p report.PeerStats) bool {
		return p.Gateway.Refused[report.AuthFull] > 0
	})
	for range 3 {
		peerSeen(t, topo.Client, addr) // at the limit: intact, whichever path
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	// The pool backs off while refused: give it its longest backoff.
	deadline := time.Now().Add(60 * time.Second)
	for p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool; p.Idle != pool; p = peerStatus(t, topo.Terminal).Daemon.Peer.Pool {
		if time.Now().After(deadline) {
			t.Fatalf("the pool never filled again after the limit: %+v", p)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
