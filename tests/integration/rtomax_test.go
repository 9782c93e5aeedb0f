// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// TestRTOMaxThroughOutage: a download through `--role gateway` over a 50 ms
// link that goes down for 6 s. The long (client) leg's retransmission
// timeout, read with `ss -ti` through the outage, stays at the bound
// (max(2 s, 4 RTT) = 2 s) while it backs off, where the same download with
// --rto-max 0 doubles it past 2 s; both downloads arrive byte-exact. The
// time from the link's return to the next byte is logged, not asserted (on
// a loaded machine timers drift): the bench-style comparison is in the
// branch's report.
func TestRTOMaxThroughOutage(t *testing.T) {
	if err := tuning.ProbeRTOMax(); err != nil {
		t.Skip(err)
	}
	for _, c := range []struct {
		name    string
		args    []string
		bounded bool
	}{
		{"bounded", nil, true},
		{"control", []string{"--rto-max", "0"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := outageDownload(t, c.args)
			t.Logf("%s: rto up to %d ms, backoff up to %d, next byte %s after the link returned, done in %s",
				c.name, r.maxRTO, r.maxBackoff, r.resumed, r.took)
			if r.maxBackoff < 2 {
				t.Fatalf("the long leg backed off %d times: the outage did not reach it", r.maxBackoff)
			}
			if c.bounded && r.maxRTO > 2000 {
				t.Errorf("bounded: the long leg's RTO reached %d ms, want at most the 2000 ms bound", r.maxRTO)
			}
			if !c.bounded && r.maxRTO <= 2000 {
				t.Errorf("control: the long leg's RTO stayed at %d ms: the comparison shows nothing", r.maxRTO)
			}
			if c.bounded && r.set < 1 {
				t.Errorf("status: rto_bound.set %d, want the long leg counted", r.set)
			}
			if bounded := strings.Contains(r.presets, "client leg: bbr, initcwnd 1000, initrwnd 2048, sndbuf 16MiB, rcvbuf 16MiB, quickack, rto-max 4x the handshake RTT"); bounded != c.bounded {
				t.Errorf("presets %q: say the client leg's bound: %v, want %v", r.presets, bounded, c.bounded)
			}
		})
	}
}

// outageResult is what one download through the outage showed.
type outageResult struct {
	maxRTO, maxBackoff int           // of the long leg, from ss
	resumed, took      time.Duration // first byte after the return; whole download
	set                uint64        // rto_bound.set in status
	presets            string        // status's preset lines
}

const (
	outageStart = 800 * time.Millisecond
	outageLen   = 6 * time.Second
	outageBytes = 3 << 20
)

// outageDownload runs one download of outageBytes from the server through
// pepsal --role gateway (plus args), the link down from outageStart for
// outageLen after the download starts.
func outageDownload(t *testing.T, args []string) outageResult {
	var br *linkemu.Bridge
	dir := linkemu.Dir{Delay: 25 * time.Millisecond, RateBps: 8_000_000}
	link := linkemu.Link{Down: dir, Up: dir, Seed: 1, Schedule: &linkemu.Schedule{
		WaitArm: true, Outages: []linkemu.Outage{{Start: outageStart, Len: outageLen}}}}
	b := newBedWith(t, defaultSuite(), testbed.Options{Middle: bridgeMiddle(link, &br)})
	addr := hostPort(testbed.ServerV4, 8420)
	servePattern(t, b.Server, addr, outageBytes)
	b.startPepsal(append([]string{"--iface", testbed.RouterClientIf, "--role", "gateway"}, args...)...)
	// Neighbour resolution and a first flow before the schedule starts.
	warm := mustDial(t, b.Client, addr)
	if _, err := io.ReadFull(warm, make([]byte, 1)); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	warm.Close()

	stopSS := make(chan struct{})
	var (
		mu                 sync.Mutex
		maxRTO, maxBackoff int
		wg                 sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopSS:
				return
			case <-time.After(100 * time.Millisecond):
			}
			rto, bo := longLegTimer(b.Router)
			mu.Lock()
			maxRTO, maxBackoff = max(maxRTO, rto), max(maxBackoff, bo)
			mu.Unlock()
		}
	}()
	defer func() { close(stopSS); wg.Wait() }()

	c := mustDial(t, b.Client, addr)
	armed := br.Arm()
	back := armed.Add(outageStart + outageLen)
	var res outageResult
	var err error
	if res.resumed, err = readPattern(c, outageBytes, back, outageLen); err != nil {
		t.Fatal(err)
	}
	res.took = time.Since(armed)
	info := b.daemonInfo()
	if rb := info.RTOBound; rb != nil {
		res.set = rb.Set
		if rb.Client != "4x the handshake RTT within 2s-120s" || rb.Server != "off" {
			t.Errorf("status rto_bound: client %q, server %q", rb.Client, rb.Server)
		}
	}
	res.presets = strings.Join(info.Presets, "; ")
	mu.Lock()
	res.maxRTO, res.maxBackoff = maxRTO, maxBackoff
	mu.Unlock()
	return res
}

func pattern(i int) byte { return byte(i*7 + i>>13) }

var (
	ssRTO     = regexp.MustCompile(`\brto:([0-9.]+)`)
	ssBackoff = regexp.MustCompile(`\bbackoff:([0-9]+)`)
)

// longLegTimer is the largest RTO (ms) and back-off count `ss -ti` shows
// among the router's connections toward the client: the long legs of
// --role gateway.
func longLegTimer(ns *testbed.NS) (rto, backoff int) {
	out, err := ns.Command("ss", "-tinH", "dst", testbed.ClientV4).Output()
	if err != nil {
		return 0, 0
	}
	for _, m := range ssRTO.FindAllSubmatch(out, -1) {
		f, _ := strconv.ParseFloat(string(m[1]), 64)
		rto = max(rto, int(f))
	}
	for _, m := range ssBackoff.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		backoff = max(backoff, n)
	}
	return rto, backoff
}
