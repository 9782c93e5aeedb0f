// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/report"
)

// TestPeerGatewayRestart (DEPLOYING.md "Restarts and reloads"): a gateway
// that stops resets the terminal's pooled connections; the terminal finds
// them dead when flows come, sends those flows the fast-open way (they
// work, unsplit at the gateway), and its pool refills by itself once the
// gateway serves again, so that flows ride warm connections again.
func TestPeerGatewayRestart(t *testing.T) {
	const pool = 4
	cfg := defaultSuite()
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	for _, f := range twoPEPFamilies {
		transferServer(t, topo.Server, hostPort(f.server, 9000))
	}
	gw := startPeerGateway(t, cfg, topo, key)
	startPeerTerminal(t, cfg, topo, key, pool)
	full := func(p report.PeerStats) bool { return p.Pool.Idle == pool }
	waitPeer(t, topo.Terminal, "pool full", full)
	send := func(what string) {
		t.Helper()
		for i, f := range twoPEPFamilies {
			if err := transfer(topo.Client, hostPort(f.server, 9000), 64<<10, 256<<10, uint64(i)); err != nil {
				t.Fatalf("%s, %s: %v", what, f.name, err)
			}
		}
	}
	send("before the restart")
	before := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool

	if err := gw.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("gateway stop: %v", err)
	}
	send("gateway stopped")
	p := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool
	if p.Taken != before.Taken || p.Dead-before.Dead < pool-2 {
		t.Errorf("gateway stopped: pool %+v, want no flow taken and the pooled connections found dead (before: %+v)", p, before)
	}
	if fb := p.FallbackEmpty + p.FallbackDown - before.FallbackEmpty - before.FallbackDown; fb != 2 {
		t.Errorf("gateway stopped: %d fast-open fallbacks, want 2", fb)
	}

	startPeerGateway(t, cfg, topo, key)
	waitPeer(t, topo.Terminal, "refilled after the gateway's return", full)
	send("gateway back")
	if got := peerStatus(t, topo.Terminal).Daemon.Peer.Pool.Taken; got != before.Taken+2 {
		t.Errorf("gateway back: %d flows rode warm connections, want 2", got-before.Taken)
	}
}
