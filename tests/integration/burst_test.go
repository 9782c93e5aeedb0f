// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/report"
)

// TestPeerBurstHeavy measures a browser-like burst through two pepsals with
// warm paths over the GEO link: 20 downloads of 100 KB started together,
// from the first connect to the last byte, with the default pool; median of
// 5 bursts, the pool refilled before each. A measurement, run by hand:
//
//	PEPSAL_BURST_HEAVY=1 go test -p 1 -count=1 -v -run TestPeerBurstHeavy ./tests/integration/
func TestPeerBurstHeavy(t *testing.T) {
	if os.Getenv("PEPSAL_BURST_HEAVY") == "" {
		t.Skip("a measurement: set PEPSAL_BURST_HEAVY=1")
	}
	geo, err := linkemu.Profile("geo")
	if err != nil {
		t.Fatal(err)
	}
	topo := twoPEPBed(t, testbed.Options{Prefix: "pwb", Middle: linkemu.Middle(geo)})
	key := writeKey(t, testKey(), 0o600)
	f := twoPEPFamilies[0]
	transferServer(t, topo.Server, hostPort(f.server, 9100))
	startPeerGateway(t, defaultSuite(), topo, key)
	pool := peer.DefaultPool
	if n, err := strconv.Atoi(os.Getenv("PEPSAL_BURST_POOL")); err == nil && n > 0 {
		pool = n // what another pool size does
	}
	startPeerTerminal(t, defaultSuite(), topo, key, pool)
	full := func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool }
	var times []time.Duration
	for run := range 5 {
		waitPeer(t, topo.Terminal, "pool full", full)
		lossBefore := burstLoss(t, topo.Gateway)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := transfer(topo.Client, hostPort(f.server, 9100), 0, 100_000, uint64(run*20+i)); err != nil {
					errs <- fmt.Errorf("download %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		p := peerStatus(t, topo.Terminal).Daemon.Peer.Pool
		t.Logf("burst %d: 20 x 100 KB in %s (pool: %d taken, %d empty-pool fallbacks so far; gateway %s)", run+1, took.Round(time.Millisecond), p.Taken, p.FallbackEmpty, burstLoss(t, topo.Gateway).minus(lossBefore))
		times = append(times, took)
	}
	slices.Sort(times)
	t.Logf("median of 5 bursts: %s", times[2].Round(time.Millisecond))
}

// lossCounters are the gateway's TCP loss-recovery events: a burst that
// overflows the link's queue shows up here.
type lossCounters struct{ probes, timeouts, recoveries int }

func burstLoss(t *testing.T, ns *testbed.NS) lossCounters {
	return lossCounters{netstat(t, ns, "TCPLossProbes"), netstat(t, ns, "TCPTimeouts"), netstat(t, ns, "TCPSackRecovery")}
}

func (c lossCounters) minus(o lossCounters) string {
	return fmt.Sprintf("loss probes %d, timeouts %d, SACK recoveries %d", c.probes-o.probes, c.timeouts-o.timeouts, c.recoveries-o.recoveries)
}
