// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/report"
	dto "github.com/prometheus/client_model/go"
)

// Warm paths between a terminal and a gateway pepsal (issue #12). The
// behaviours that depend on the relay mode are in relaySuite.

const peerPort = 7700

var peerGatewayAddr = hostPort(testbed.GatewayLinkV4, peerPort)

var twoPEPFamilies = []struct{ name, client, server string }{
	{"ipv4", testbed.TPClientV4, testbed.TPServerV4},
	{"ipv6", testbed.TPClientV6, testbed.TPServerV6},
}

func writeKey(t *testing.T, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "peer.key")
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func testKey() []byte { return bytes.Repeat([]byte("k3y!"), 8) }

// newPeerTopo builds the two-PEP bed without link delay (these tests check
// semantics, not speed) and detaches both ends at cleanup.
func newPeerTopo(t *testing.T) *testbed.TwoPEP {
	t.Helper()
	return twoPEPBed(t, testbed.Options{Prefix: "pwp"})
}

func startPeerGateway(t *testing.T, cfg suite, topo *testbed.TwoPEP, key string, extra ...string) *daemon {
	return startPepsalIn(t, cfg, topo.Gateway, append([]string{"--iface", testbed.GatewayLinkIf, "--role", "gateway",
		"--peer-listen", peerGatewayAddr, "--peer-key", key}, append(trustTerminal, extra...)...)...)
}

func startPeerTerminal(t *testing.T, cfg suite, topo *testbed.TwoPEP, key string, pool int, extra ...string) *daemon {
	return startPepsalIn(t, cfg, topo.Terminal, append([]string{"--iface", testbed.TerminalClientIf, "--role", "terminal",
		"--peer", peerGatewayAddr, "--peer-key", key, "--peer-pool", fmt.Sprint(pool)}, extra...)...)
}

// newPeerPair starts both ends and waits for the terminal's pool to fill.
func newPeerPair(t *testing.T, cfg suite, pool int, gwExtra ...string) (*testbed.TwoPEP, string) {
	t.Helper()
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, cfg, topo, key, gwExtra...)
	startPeerTerminal(t, cfg, topo, key, pool)
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
	return topo, key
}

// peerStatus is `pepsal status --json` in ns, which must show a daemon with
// warm paths.
func peerStatus(t *testing.T, ns *testbed.NS) status {
	t.Helper()
	s := statusIn(t, ns)
	if s.Daemon == nil || s.Daemon.Peer == nil {
		t.Fatalf("status --json in %s: no daemon, or no warm-path section", ns.Name)
	}
	return s
}

func waitPeer(t *testing.T, ns *testbed.NS, what string, ok func(report.PeerStats) bool) report.PeerStats {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := *peerStatus(t, ns).Daemon.Peer
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never %s: pool %+v gateway %+v", ns.Name, what, p.Pool, p.Gateway)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testPeerWarmPath: flows ride warm connections byte-exact both ways (v4,
// v6), half-closes and resets cross them each way, `pepsal conns` marks
// them, the gateway diverts nothing (no flow went the fast-open way), and
// both ends' /metrics say what their status says.
func testPeerWarmPath(t *testing.T, cfg suite) {
	// newPeerPair, with metrics on both ends (its extra arguments go to the
	// gateway only). Each end is in its own namespace: one address for both.
	const pool = 4
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, cfg, topo, key, "--metrics-addr", metricsAddr)
	startPeerTerminal(t, cfg, topo, key, pool, "--metrics-addr", metricsAddr)
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
	reply := bytes.Repeat([]byte("reply after EOF "), 64<<10)
	rstConns := make(chan *net.TCPConn, 8)
	for _, f := range twoPEPFamilies {
		transferServer(t, topo.Server, hostPort(f.server, 9000))
		// Client half-closes first: the reply follows its FIN.
		serve(t, topo.Server, hostPort(f.server, 7000), func(c *net.TCPConn) {
			if req, err := io.ReadAll(c); err == nil && string(req) == "request" {
				c.Write(reply)
			}
		})
		// Server half-closes first: the client still sends after its FIN.
		serve(t, topo.Server, hostPort(f.server, 7001), func(c *net.TCPConn) {
			c.Write([]byte("banner"))
			c.CloseWrite()
			got, _ := io.ReadAll(c)
			if string(got) == "after your FIN" {
				// Proof it arrived: a second connection asks.
				rstConns <- nil
			}
		})
		serve(t, topo.Server, hostPort(f.server, 7100), func(c *net.TCPConn) {
			rstConns <- c
			<-t.Context().Done() // the test resets and closes it
		})
	}
	before := peerStatus(t, topo.Gateway).counter("syn_diverted")
	for _, f := range twoPEPFamilies {
		if err := transfer(topo.Client, hostPort(f.server, 9000), 3<<20, 5<<20, 12); err != nil {
			t.Errorf("%s: transfer over a warm path: %v", f.name, err)
		}
		// Client half-close.
		c := mustDial(t, topo.Client, hostPort(f.server, 7000))
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("request"))
		c.CloseWrite()
		if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, reply) {
			t.Errorf("%s: client half-close: reply of %d bytes (%v), want %d", f.name, len(got), err, len(reply))
		}
		c.Close()
		// Server half-close.
		c = mustDial(t, topo.Client, hostPort(f.server, 7001))
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if got, err := io.ReadAll(c); err != nil || string(got) != "banner" {
			t.Errorf("%s: server half-close: read %q, %v", f.name, got, err)
		}
		c.Write([]byte("after your FIN"))
		c.CloseWrite()
		select {
		case <-rstConns:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: bytes sent after the server's FIN never arrived", f.name)
		}
		c.Close()
		// Resets, each way.
		for _, resetter := range []string{"client", "server"} {
			c := mustDial(t, topo.Client, hostPort(f.server, 7100))
			c.Write([]byte("x"))
			var s *net.TCPConn
			select {
			case s = <-rstConns:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: server never got the connection", f.name)
			}
			if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			if resetter == "client" {
				// While it is open, both ends' conns say it rides a warm path.
				for _, ns := range []*testbed.NS{topo.Terminal, topo.Gateway} {
					r := runCmdIn(ns, pepsalBin, "conns")
					if !strings.Contains(r.stdout, "warm") {
						t.Errorf("%s: pepsal conns in %s does not mark the warm flow:\n%s", f.name, ns.Name, r.stdout)
					}
				}
			}
			victim, killer := s, c
			if resetter == "server" {
				victim, killer = c, s
			}
			killer.SetLinger(0)
			killer.Close()
			victim.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := victim.Read(make([]byte, 10)); !isReset(err) {
				t.Errorf("%s, %s resets: other end read %v, want ECONNRESET", f.name, resetter, err)
			}
			victim.Close()
		}
	}
	p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool
	g := peerStatus(t, topo.Gateway)
	if want := uint64(2 * 5); p.Taken != want || p.FallbackEmpty+p.FallbackDown != 0 {
		t.Errorf("terminal pool %+v: want %d flows taken, no fallback", p, want)
	}
	if g.Daemon.Peer.Gateway.Served != p.Taken {
		t.Errorf("gateway served %d warm flows, terminal sent %d", g.Daemon.Peer.Gateway.Served, p.Taken)
	}
	if n := g.counter("syn_diverted") - before; n != 0 {
		t.Errorf("gateway diverted %d SYNs: flows went the fast-open way", n)
	}
	if g.counter("tune_init_cwnd") == 0 {
		t.Error("gateway: sock_ops tuned no warm connection (tune_init_cwnd = 0)")
	}
	waitPeer(t, topo.Terminal, "refilled", func(p report.PeerStats) bool { return p.Pool.Idle == pool })
	checkPeerMetrics(t, topo)
}

// checkPeerMetrics: the terminal's /metrics has its pool and the gateway's
// its listener, each equal to `pepsal status --json` read in the same quiet
// moment, and neither has the other end's series.
func checkPeerMetrics(t *testing.T, topo *testbed.TwoPEP) {
	t.Helper()
	// Scrape, status, scrape on both ends: equal peer series mean no warm
	// connection moved meanwhile (a refill touches both ends), so status
	// must match them. Only the peer series: a stray packet may bump a BPF
	// counter.
	peerOnly := func(fams map[string]*dto.MetricFamily) map[string]float64 {
		out := pepsalValues(fams)
		for k := range out {
			if !strings.HasPrefix(k, "pepsal_peer_") {
				delete(out, k)
			}
		}
		return out
	}
	var term, gw map[string]*dto.MetricFamily
	var p *report.PeerPoolStats
	var g *report.PeerGatewayStats
	for try := 0; ; try++ {
		at, ag := scrapeMetrics(t, topo.Terminal), scrapeMetrics(t, topo.Gateway)
		p, g = peerStatus(t, topo.Terminal).Daemon.Peer.Pool, peerStatus(t, topo.Gateway).Daemon.Peer.Gateway
		zt, zg := scrapeMetrics(t, topo.Terminal), scrapeMetrics(t, topo.Gateway)
		if reflect.DeepEqual(peerOnly(at), peerOnly(zt)) && reflect.DeepEqual(peerOnly(ag), peerOnly(zg)) {
			term, gw = at, ag
			break
		}
		if try == 10 {
			t.Fatalf("peer metrics never stable between two scrapes:\nterminal %v\n      -> %v\ngateway %v\n     -> %v",
				peerOnly(at), peerOnly(zt), peerOnly(ag), peerOnly(zg))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p == nil || g == nil {
		t.Fatalf("status: terminal pool %+v, gateway %+v: want both", p, g)
	}
	for _, c := range []struct {
		fams   map[string]*dto.MetricFamily
		name   string
		labels []string
		want   float64
		what   string
	}{
		{term, "pepsal_peer_pool_size", nil, float64(p.Size), "pool size"},
		{term, "pepsal_peer_pool_connections", []string{"state", "idle"}, float64(p.Idle), "pool idle"},
		{term, "pepsal_peer_pool_connections", []string{"state", "in_use"}, float64(p.InUse), "pool in_use"},
		{term, "pepsal_peer_pool_connections", []string{"state", "dialing"}, float64(p.Dialing), "pool dialing"},
		{term, "pepsal_peer_pool_refills_total", nil, float64(p.Refills), "pool refills"},
		{term, "pepsal_peer_pool_dial_failures_total", nil, float64(p.DialFailures), "pool dial_failures"},
		{term, "pepsal_peer_pool_taken_total", nil, float64(p.Taken), "pool taken"},
		{term, "pepsal_peer_pool_recycled_total", nil, float64(p.Recycled), "pool recycled"},
		{term, "pepsal_peer_pool_dead_total", nil, float64(p.Dead), "pool dead"},
		{term, "pepsal_peer_pool_fallbacks_total", []string{"reason", "empty"}, float64(p.FallbackEmpty), "pool fallback_empty"},
		{term, "pepsal_peer_pool_fallbacks_total", []string{"reason", "down"}, float64(p.FallbackDown), "pool fallback_down"},
		{term, "pepsal_peer_pool_backoff_seconds", nil, float64(p.BackoffMS) / 1000, "pool backoff"},
		{gw, "pepsal_peer_gateway_accepted_total", nil, float64(g.Accepted), "gateway accepted"},
		{gw, "pepsal_peer_gateway_waiting", nil, float64(g.Waiting), "gateway waiting"},
		{gw, "pepsal_peer_gateway_served_total", nil, float64(g.Served), "gateway served"},
		{gw, "pepsal_peer_gateway_idle_closed_total", nil, float64(g.IdleClosed), "gateway idle_closed"},
		{gw, "pepsal_peer_gateway_paced_starts_total", nil, float64(g.PacedStarts), "gateway paced_starts"},
		{gw, "pepsal_peer_gateway_starting", nil, float64(g.Starting), "gateway starting"},
	} {
		if got := metricValue(t, c.fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s: metrics %v, status %v", c.what, got, c.want)
		}
	}
	for _, r := range report.AuthReasons {
		if got := metricValue(t, gw, "pepsal_peer_gateway_auth_failures_total", "reason", r); got != float64(g.Refused[r]) {
			t.Errorf("gateway auth failures (%s): metrics %v, status %d", r, got, g.Refused[r])
		}
	}
	// Across the two ends, in the metrics alone: every flow the terminal
	// sent over a warm connection was served, and every warm connection
	// the gateway greeted it had accepted.
	taken, served := metricValue(t, term, "pepsal_peer_pool_taken_total"), metricValue(t, gw, "pepsal_peer_gateway_served_total")
	if taken == 0 || served != taken {
		t.Errorf("terminal took %v warm connections, gateway served %v: want equal, not 0", taken, served)
	}
	refills, accepted := metricValue(t, term, "pepsal_peer_pool_refills_total"), metricValue(t, gw, "pepsal_peer_gateway_accepted_total")
	if refills < taken || accepted < refills {
		t.Errorf("terminal refills %v, gateway accepted %v, taken %v: want taken <= refills <= accepted", refills, accepted, taken)
	}
	for _, end := range []struct {
		name  string
		fams  map[string]*dto.MetricFamily
		other string
	}{{"terminal", term, "pepsal_peer_gateway_"}, {"gateway", gw, "pepsal_peer_pool_"}} {
		for name := range end.fams {
			if strings.HasPrefix(name, end.other) {
				t.Errorf("%s exports %s, an end it does not have", end.name, name)
			}
		}
	}
}

// testPeerUpstreamFailureResetsClient: the gateway cannot reach the server
// (refused, unreachable, silent): it resets the warm connection, and the
// terminal resets the client, never a clean end.
func testPeerUpstreamFailureResetsClient(t *testing.T, cfg suite) {
	topo, _ := newPeerPair(t, cfg, 4, "--connect-timeout", "2s")
	silent := map[string]string{"ipv4": "10.78.2.77", "ipv6": "fd78:2::77"}
	unreachable := map[string]string{"ipv4": "10.78.2.99", "ipv6": "fd78:2::99"}
	h, err := topo.Server.Handle()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("eth0")
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range silent {
		proto := "-4"
		if strings.Contains(ip, ":") {
			proto = "-6"
		}
		if out, err := topo.Gateway.Command("ip", proto, "neigh", "replace", ip, "lladdr", l.Attrs().HardwareAddr.String(),
			"dev", testbed.GatewayServerIf, "nud", "permanent").CombinedOutput(); err != nil {
			t.Fatalf("static neighbor: %v: %s", err, out)
		}
	}
	for _, f := range twoPEPFamilies {
		for _, tc := range []struct{ what, addr string }{
			{"refused", hostPort(f.server, 7999)},
			{"unreachable", hostPort(unreachable[f.name], 80)},
			{"silent", hostPort(silent[f.name], 80)},
		} {
			n := 0
			c, err := dial(topo.Client, tc.addr, 5*time.Second)
			if err == nil {
				c.Write([]byte("GET /\r\n"))
				c.SetDeadline(time.Now().Add(15 * time.Second))
				n, err = c.Read(make([]byte, 1))
				c.Close()
			}
			if n != 0 || !isReset(err) {
				t.Errorf("%s %s: read %d bytes, %v; want ECONNRESET", f.name, tc.what, n, err)
			}
		}
	}
	g := peerStatus(t, topo.Gateway)
	if g.Daemon.Stats.UpstreamFailed != 6 || g.Daemon.Peer.Gateway.Served != 6 {
		t.Errorf("gateway: %d upstream failures over %d warm flows, want 6 and 6", g.Daemon.Stats.UpstreamFailed, g.Daemon.Peer.Gateway.Served)
	}
}

// testPeerTransparentGateway: a --transparent gateway dials the server from
// the client's address, warm path or not.
func testPeerTransparentGateway(t *testing.T, cfg suite) {
	topo, _ := newPeerPair(t, cfg, 2, "--transparent")
	for _, f := range twoPEPFamilies {
		peerServer(t, topo.Server, hostPort(f.server, 7300))
		if seen := peerSeen(t, topo.Client, hostPort(f.server, 7300)); seen != f.client {
			t.Errorf("%s: server saw %s, want the client %s", f.name, seen, f.client)
		}
	}
	if p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool; p.Taken != 2 {
		t.Errorf("pool %+v: want the 2 flows on warm connections", p)
	}
}

// testPeerFallback: a burst larger than the pool, and a gateway that is not
// running, fall back to the fast-open path, counted; the pool refills by
// itself when the gateway comes back.
func testPeerFallback(t *testing.T, cfg suite) {
	// A 100 ms round trip, so that the pool cannot refill while the burst
	// takes its connections (without delay it refills at once).
	hop := linkemu.Dir{Delay: 50 * time.Millisecond}
	topo := twoPEPBed(t, testbed.Options{Prefix: "pwp", Middle: linkemu.Middle(linkemu.Link{Down: hop, Up: hop})})
	key := writeKey(t, testKey(), 0o600)
	for _, f := range twoPEPFamilies {
		transferServer(t, topo.Server, hostPort(f.server, 9000))
	}
	startPeerTerminal(t, cfg, topo, key, 2)
	// Gateway down (no pepsal there at all): flows still work, unsplit at
	// the gateway, and count as fallbacks while the pool backs off.
	waitPeer(t, topo.Terminal, "backing off", func(p report.PeerStats) bool { return p.Pool.DialFailures > 0 })
	for _, f := range twoPEPFamilies {
		if err := transfer(topo.Client, hostPort(f.server, 9000), 100<<10, 300<<10, 3); err != nil {
			t.Errorf("%s with the gateway down: %v", f.name, err)
		}
	}
	if p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool; p.FallbackDown != 2 || p.Taken != 0 {
		t.Errorf("gateway down: pool %+v, want 2 fallbacks counted as down", p)
	}
	startPeerGateway(t, cfg, topo, key)
	waitPeer(t, topo.Terminal, "refilled after the gateway came up", func(p report.PeerStats) bool { return p.Pool.Idle == 2 })
	// A burst of 8 over a pool of 2: 2 ride warm connections (or a few
	// more, refilled meanwhile), the rest fall back; all are intact.
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 8 {
		f := twoPEPFamilies[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := transfer(topo.Client, hostPort(f.server, 9000), 200<<10, 1<<20, uint64(i)); err != nil {
				failed.Add(1)
				t.Errorf("burst %d (%s): %v", i, f.name, err)
			}
		}()
	}
	wg.Wait()
	p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool
	if p.Taken < 2 || p.FallbackEmpty == 0 || p.Taken+p.FallbackEmpty != 8 {
		t.Errorf("burst of 8 over a pool of 2: pool %+v, want >= 2 taken, the rest counted as empty-pool fallbacks", p)
	}
	waitPeer(t, topo.Terminal, "refilled after the burst", func(p report.PeerStats) bool { return p.Pool.Idle == 2 })
}

// peerClient speaks the protocol by hand from the terminal's namespace.
func peerClient(t *testing.T, topo *testbed.TwoPEP) (*net.TCPConn, []byte) {
	t.Helper()
	c, err := dial(topo.Terminal, peerGatewayAddr, 5*time.Second)
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
// replayed header, garbage, a header that never completes and a terminal
// not allowed are closed without dialing anything (the server sees only the
// one legitimate connection) and counted by reason.
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

	// A legitimate header, captured, works once.
	c, hello := peerClient(t, topo)
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

	// Replayed on a new connection.
	c, _ = peerClient(t, topo)
	c.Write(hdr)
	if err := closedByGateway(c, 10*time.Second); err != nil {
		t.Errorf("replayed header: %v", err)
	}
	// Wrong key.
	c, hello = peerClient(t, topo)
	bad, _ := peer.EncodeHeader(bytes.Repeat([]byte("wrong key"), 4), hello, dst, cli, 0)
	c.Write(bad)
	if err := closedByGateway(c, 10*time.Second); err != nil {
		t.Errorf("wrong key: %v", err)
	}
	// Garbage.
	c, _ = peerClient(t, topo)
	c.Write([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	if err := closedByGateway(c, 10*time.Second); err != nil {
		t.Errorf("garbage: %v", err)
	}
	// A header that never completes: closed after the header timeout.
	c, hello = peerClient(t, topo)
	good, _ := peer.EncodeHeader(testKey(), hello, dst, cli, 0)
	c.Write(good[:40])
	if err := closedByGateway(c, 15*time.Second); err != nil {
		t.Errorf("incomplete header: %v", err)
	}
	s := peerStatus(t, topo.Gateway).Daemon.Peer.Gateway
	for reason, want := range map[string]uint64{report.AuthReplay: 1, report.AuthBadMAC: 1, report.AuthGarbage: 1, report.AuthIncomplete: 1} {
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

// TestPeerBadCLI: bad warm-path options stop `pepsal run` with one line,
// a non-zero exit and nothing attached.
func TestPeerBadCLI(t *testing.T) {
	b := newBed(t, defaultSuite())
	dir := t.TempDir()
	mk := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, mode)
		os.Chmod(p, mode)
		return p
	}
	good := mk("good", testKey(), 0o600)
	world := mk("world", testKey(), 0o644)
	short := mk("short", testKey()[:16], 0o600)
	base := []string{"run", "--iface", testbed.RouterClientIf}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer-listen", ":7700", "--peer-key", world}, "group or others"},
		{[]string{"--peer-listen", ":7700", "--peer-key", short}, "at least 32"},
		{[]string{"--peer-listen", ":7700", "--peer-key", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"--peer-listen", ":7700"}, "--peer-key FILE is required"},
		{[]string{"--peer", "gateway.example:7700", "--peer-key", good}, "not an IP address"},
		{[]string{"--peer", "10.0.0.1", "--peer-key", good}, "bad --peer"},
		{[]string{"--peer", "10.0.0.1:0", "--peer-key", good}, "not 1-65535"},
		{[]string{"--peer-listen", "10.0.0.1:99999", "--peer-key", good}, "bad --peer-listen"},
		{[]string{"--peer-listen", "192.0.2.200:7700", "--peer-key", good}, "--peer-listen"}, // not an address of this host
		{[]string{"--peer", "10.0.0.1:7700", "--peer-key", good, "--peer-pool", "0"}, "--peer-pool"},
		{[]string{"--peer-listen", ":7700", "--peer-key", good, "--peer-allow", "10.0.0.300/8"}, "bad --peer-allow"},
		{[]string{"--peer-key", good}, "needs --peer"},
	} {
		r := b.pepsal(append(append([]string{}, base...), tc.args...)...)
		msg := strings.TrimSpace(r.stderr)
		if r.code == 0 || !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") > 0 {
			t.Errorf("%v: exit %d, stderr %q; want one line with %q", tc.args, r.code, msg, tc.want)
		}
		if p := pins(t, b.Router); p != "" {
			t.Fatalf("%v left pins:\n%s", tc.args, p)
		}
	}
}

// TestPeerBurstPaced: flows toward one terminal that start together share
// its link for their first round trips (the gateway caps each one's pacing
// rate to a share), byte-exact; a flow that answered and went quiet holds no
// cap; a flow that starts alone is never paced. Both relays.
func TestPeerBurstPaced(t *testing.T) {
	forEachRelay(t, testPeerBurstPaced)
}

// barrier makes a server answer only once n connections are in: their flows
// have all joined the gateway's ensemble (before it dialed) and have all
// sent nothing yet, whatever the machine's speed.
func barrier(n int, serve func(*net.TCPConn)) func(*net.TCPConn) {
	var mu sync.Mutex
	in := 0
	all := make(chan struct{})
	return func(c *net.TCPConn) {
		mu.Lock()
		if in++; in == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(20 * time.Second):
		}
		serve(c)
	}
}

func testPeerBurstPaced(t *testing.T, cfg suite) {
	// An 800 ms round trip: a flow's start (two round trips) outlasts the
	// status and conns reads below by far.
	hop := linkemu.Dir{Delay: 400 * time.Millisecond}
	topo := twoPEPBed(t, testbed.Options{Prefix: "pwb", Middle: linkemu.Middle(linkemu.Link{Down: hop, Up: hop})})
	key := writeKey(t, testKey(), 0o600)
	f := twoPEPFamilies[0]
	const pool = 6
	burst := hostPort(f.server, 9000)
	serve(t, topo.Server, burst, barrier(pool, serveTransfer))
	held := hostPort(f.server, 9001) // one byte once all are in, then open until the client closes
	serve(t, topo.Server, held, barrier(3, func(c *net.TCPConn) {
		c.Write([]byte{1})
		io.Copy(io.Discard, c)
	}))
	lone := hostPort(f.server, 9002)
	transferServer(t, topo.Server, lone)
	startPeerGateway(t, cfg, topo, key)
	startPeerTerminal(t, cfg, topo, key, pool)
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool.Idle == pool })
	gwPaced := func() uint64 { return peerStatus(t, topo.Gateway).Daemon.Peer.Gateway.PacedStarts }

	// A burst whose answers come together: every flow intact, and all but
	// the first (alone when it joined) paced.
	var wg sync.WaitGroup
	for i := range pool {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := transfer(topo.Client, burst, 10<<10, 300<<10, uint64(i)); err != nil {
				t.Errorf("burst flow %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if n := gwPaced(); n < pool-1 {
		t.Errorf("a burst of %d flows answered together: %d paced starts, want >= %d", pool, n, pool-1)
	}

	// Flows that answered one byte and went quiet, still open and still in
	// their start: they hold no cap.
	waitPeer(t, topo.Terminal, "pool refilled", func(p report.PeerStats) bool { return p.Pool.Idle == pool })
	var heldWG sync.WaitGroup
	for range 3 {
		heldWG.Add(1)
		go func() {
			defer heldWG.Done()
			c, err := dial(topo.Client, held, 5*time.Second)
			if err != nil {
				t.Errorf("held flow: %v", err)
				return
			}
			t.Cleanup(func() { c.Close() })
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Errorf("held flow: %v", err)
			}
		}()
	}
	heldWG.Wait()
	starting := func() int { return peerStatus(t, topo.Gateway).Daemon.Peer.Gateway.Starting }
	if kmatrix.Emulated() && starting() != 3 {
		// Their start is two round trips of the link; an emulated CPU
		// (make test-kernels) can take longer than that to ask.
		t.Skip("the quiet flows' start ended before an emulated guest could read the gateway's status")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if starting() != 3 {
			t.Fatal("quiet flows kept their caps until their start ended (want them uncapped as soon as they went quiet)")
		}
		var capped, warm int
		for _, c := range connsIn(t, topo.Gateway) {
			if c.Peer == "warm" && c.ClientLeg != nil {
				warm++
				if c.ClientLeg.MaxPacingRate != 0 {
					capped++
				}
			}
		}
		// Still all three starting after the read: the caps were gone
		// before their start ended.
		if warm == 3 && capped == 0 && starting() == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quiet flows: %d warm, %d still capped (want 3, 0)", warm, capped)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Alone, once no other flow is starting: never paced.
	waitPeer(t, topo.Gateway, "every start over", func(p report.PeerStats) bool { return p.Gateway.Starting == 0 })
	before := gwPaced()
	if err := transfer(topo.Client, lone, 0, 300<<10, 99); err != nil {
		t.Errorf("lone flow: %v", err)
	}
	if after := gwPaced(); after != before {
		t.Errorf("a flow that started alone was paced (%d -> %d paced starts)", before, after)
	}
}
