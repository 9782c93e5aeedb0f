// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// misbehaveRun is one run of runMisbehave: a link whose schedule takes it
// down for outage from down after the arming (handovers may follow), how
// much the download moves, and how long the idle connection waits after
// the link's return.
type misbehaveRun struct {
	link         linkemu.Link
	down, outage time.Duration
	bytes        int
	settle       time.Duration
}

// leoLikeRun is testOutageAndHandovers's link: 50 ms round trip at
// 8 Mbit/s, down for 3 s, then a handover every 1.5 s (a 150 ms outage, or
// 200 ms of 30 % loss, each with a step of delay).
func leoLikeRun() misbehaveRun {
	const down, outage = 800 * time.Millisecond, 3 * time.Second
	dir := linkemu.Dir{Delay: 25 * time.Millisecond, RateBps: 8_000_000}
	r := misbehaveRun{down: down, outage: outage, bytes: 4 << 20, settle: 4500 * time.Millisecond}
	r.link = linkemu.Link{Down: dir, Up: dir, Seed: 7, Schedule: &linkemu.Schedule{
		WaitArm: true,
		Outages: []linkemu.Outage{{Start: down, Len: outage}},
		Handovers: &linkemu.Handovers{First: down + outage + 1500*time.Millisecond, Period: 1500 * time.Millisecond,
			Steps: []linkemu.Step{
				{Outage: 150 * time.Millisecond, Delay: 20 * time.Millisecond},
				{Burst: 200 * time.Millisecond, BurstLoss: 0.3, Delay: 30 * time.Millisecond},
			}},
	}}
	return r
}

// testOutageAndHandovers: two pepsals with warm paths over a link that goes
// down for 3 s and then hands over every 1.5 s (leoLikeRun). Only where the
// long legs' back-off is bounded (TCP_RTO_MAX_MS, 6.15+): on 6.1 without
// it one run in sixteen lost a connection (the kernel matrix, 2026-12-08:
// the gateway finished relaying an exchange, the terminal got 47 % of it
// and was reset 2 min later), not yet explained (#24).
func testOutageAndHandovers(t *testing.T, cfg suite) {
	if err := tuning.ProbeRTOMax(); err != nil {
		t.Skipf("%v: without the bound this case lost a connection once in 16 runs on 6.1, not yet explained (#24)", err)
	}
	runMisbehave(t, cfg, leoLikeRun())
}

// TestLongOutageHeavy: the same over the GEO link (600 ms, 20/5 Mbit/s)
// down for 60 s, pepsal's default flags: every connection survives. A
// minute and a half, run by hand:
//
//	PEPSAL_OUTAGE_HEAVY=1 go test -p 1 -count=1 -v -run TestLongOutageHeavy ./tests/integration/
func TestLongOutageHeavy(t *testing.T) {
	if os.Getenv("PEPSAL_OUTAGE_HEAVY") == "" {
		t.Skip("80 s of a GEO outage: set PEPSAL_OUTAGE_HEAVY=1")
	}
	geo, err := linkemu.Profile("geo")
	if err != nil {
		t.Fatal(err)
	}
	const down, outage = 2 * time.Second, 60 * time.Second
	geo.Schedule = &linkemu.Schedule{WaitArm: true, Outages: []linkemu.Outage{{Start: down, Len: outage}}}
	runMisbehave(t, defaultSuite(), misbehaveRun{link: geo, down: down, outage: outage, bytes: 10 << 20, settle: time.Second})
}

// runMisbehave: two pepsals with warm paths over r's link. A download that
// is running when the link goes down, exchanges both ways in each family
// started with it, and an idle connection opened before it all survive
// byte-exact: no leg reset or timed out, at either pepsal. When the
// download resumed is logged, not judged: the long leg's retransmission
// bound holds (TestRTOMaxThroughOutage), but the first retransmission
// after the return can meet a queue the other flows' retransmissions
// filled, and wait a second bound (1.3-1.5 s, once in four 3.2-3.6 s here).
func runMisbehave(t *testing.T, cfg suite, r misbehaveRun) {
	topo, br := peersOverLink(t, cfg, "pwo", r.link, 4)
	v4 := twoPEPFamilies[0]
	servePattern(t, topo.Server, hostPort(v4.server, 8430), r.bytes)
	serve(t, topo.Server, hostPort(v4.server, 8431), func(c *net.TCPConn) { io.Copy(c, c) })
	for _, f := range twoPEPFamilies {
		transferServer(t, topo.Server, hostPort(f.server, 8432))
	}
	idle := mustDial(t, topo.Client, hostPort(v4.server, 8431))
	echoWithin(t, idle, "idle connection, before")

	download := mustDial(t, topo.Client, hostPort(v4.server, 8430))
	armed := br.Arm()
	back := armed.Add(r.down + r.outage)
	var wg sync.WaitGroup
	errs := make(chan error, len(twoPEPFamilies))
	for i, f := range twoPEPFamilies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := transfer(topo.Client, hostPort(f.server, 8432), 1<<20, 2<<20, uint64(40+i)); err != nil {
				errs <- fmt.Errorf("%s exchange: %w", f.name, err)
			}
		}()
	}
	resumed, err := readPattern(download, r.bytes, back, r.outage)
	if err != nil {
		t.Error(err)
	}
	done := time.Since(armed)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	time.Sleep(time.Until(back.Add(r.settle)))
	echoWithin(t, idle, "idle connection, after the link's misbehaviour")

	st := br.Stats()
	t.Logf("download: next byte %s after the link returned, done in %s; link down: %v; up: %v",
		resumed.Round(time.Millisecond), done.Round(time.Millisecond), st.Down, st.Up)
	if st.Down.DropOutage == 0 {
		t.Errorf("the outage dropped nothing downstream: the test shows nothing")
	}
	if r.link.Schedule.Handovers != nil && st.Down.DropBurst == 0 {
		t.Errorf("no handover's loss burst dropped anything downstream: the test shows nothing")
	}
	for _, ns := range []*testbed.NS{topo.Terminal, topo.Gateway} {
		s := statusIn(t, ns).Daemon
		if s == nil || s.Stats.Reset != 0 || s.Stats.UpstreamFailed != 0 {
			t.Errorf("%s: a connection was reset or failed: %+v", ns.Name, s)
		} else if s.Outages != nil {
			t.Logf("%s: outage watch %+v", ns.Name, *s.Outages)
		}
	}
}

// peersOverLink is the two-PEP bed over link, with the emulator's handle
// (to arm its schedule): both pepsals started with warm paths (extra on
// both ends) and the terminal's pool of pool connections full.
func peersOverLink(t *testing.T, cfg suite, prefix string, link linkemu.Link, pool int, extra ...string) (*testbed.TwoPEP, *linkemu.Bridge) {
	t.Helper()
	var br *linkemu.Bridge
	topo := twoPEPBed(t, testbed.Options{Prefix: prefix, Middle: bridgeMiddle(link, &br)})
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, cfg, topo, key, extra...)
	startPeerTerminal(t, cfg, topo, key, pool, extra...)
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
	return topo, br
}

// bridgeMiddle is linkemu.Middle that also hands the running bridge to *br.
func bridgeMiddle(link linkemu.Link, br **linkemu.Bridge) testbed.Middle {
	return func(ns *testbed.NS, towardClient, towardRouter string) (io.Closer, error) {
		var err error
		*br, err = linkemu.Start(ns, towardClient, towardRouter, link)
		return *br, err
	}
}

// servePattern serves n bytes of pattern to every connection on addr.
func servePattern(t *testing.T, ns *testbed.NS, addr string, n int) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		w := bufio.NewWriterSize(c, 64<<10)
		for i := range n {
			w.WriteByte(pattern(i))
		}
		w.Flush()
	})
}

// readPattern reads n bytes of pattern from c and checks each; resumed is
// how long after back the first byte arrived that was read after back.
func readPattern(c *net.TCPConn, n int, back time.Time, outage time.Duration) (resumed time.Duration, err error) {
	_ = c.SetReadDeadline(time.Now().Add(outage + kmatrix.Stretch(90*time.Second))) // a hang, not a slow run
	buf := make([]byte, 32<<10)
	for got := 0; got < n; {
		k, err := c.Read(buf)
		now := time.Now()
		for i := range k {
			if buf[i] != pattern(got+i) {
				return resumed, fmt.Errorf("download: byte %d is %#x, want %#x", got+i, buf[i], pattern(got+i))
			}
		}
		if k > 0 && resumed == 0 && now.After(back) {
			resumed = now.Sub(back)
		}
		got += k
		if err != nil {
			return resumed, fmt.Errorf("download: after %d of %d bytes: %w", got, n, err)
		}
	}
	if k, err := c.Read(buf); k != 0 || err != io.EOF {
		return resumed, fmt.Errorf("download: after the last byte %d bytes, %v; want EOF", k, err)
	}
	return resumed, nil
}

// testOutageKick: the warm paths' outage watch. A download through two
// pepsals over a 50 ms link that goes down for 5 s, with the back-off
// unbounded (--rto-max 0, as on kernels before 6.15): the gateway's
// stalled leg would retransmit next about 4 s after the link returns
// (timeouts at about 0.3, 0.9, 2.1, 4.5 and 9.3 s). The gateway pings the
// terminal while the leg is stalled, finds it silent, and at its first
// answer makes the leg retransmit: the next byte arrives within a second of
// the return, byte-exact, and status counts the outage and the kick.
func testOutageKick(t *testing.T, cfg suite) {
	const down, outageLen, size = 800 * time.Millisecond, 5 * time.Second, 3 << 20
	dir := linkemu.Dir{Delay: 25 * time.Millisecond, RateBps: 8_000_000}
	link := linkemu.Link{Down: dir, Up: dir, Seed: 3, Schedule: &linkemu.Schedule{WaitArm: true, Outages: []linkemu.Outage{{Start: down, Len: outageLen}}}}
	topo, br := peersOverLink(t, cfg, "pwk", link, 2, "--rto-max", "0")
	v4 := twoPEPFamilies[0]
	servePattern(t, topo.Server, hostPort(v4.server, 8440), size)
	download := mustDial(t, topo.Client, hostPort(v4.server, 8440))
	armed := br.Arm()
	resumed, err := readPattern(download, size, armed.Add(down+outageLen), outageLen)
	if err != nil {
		t.Fatal(err)
	}
	gw := peerStatus(t, topo.Gateway)
	o := gw.Daemon.Outages
	t.Logf("next byte %s after the link returned; gateway: %+v, timeouts recorded %d", resumed.Round(time.Millisecond), o, gw.counter("tune_rto_recorded"))
	if o == nil || o.Seen < 1 || o.Kicked < 1 || o.LastMs < 2000 {
		t.Fatalf("gateway status: outages %+v, want the outage seen (at least its 2 s of silence) and the stalled leg kicked", o)
	}
	if resumed > kmatrix.Stretch(time.Second) {
		t.Errorf("the download resumed %s after the link returned, want within a second (the unkicked back-off: about 4 s)", resumed)
	}
}
