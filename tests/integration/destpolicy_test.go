// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"maps"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// The destination policy (issue #22): a flow, split or on a warm path, never
// makes pepsal connect to what the host it runs on holds (its own
// addresses, loopback, link-local and metadata addresses) or to the
// operator's --deny prefixes. Such a flow is reset and counted by reason.

// metadataV4 stands for a cloud metadata service: a link-local address
// that a router reaches, and that would see pepsal's connection as the
// router's.
const metadataV4 = "169.254.169.254"

// testDestinationPolicySplit: a split toward a link-local address the
// router routes onward, or toward a --deny prefix, is reset before
// anything is dialed, and counted by reason; an ordinary destination is
// split as before. (The router's own addresses never reach the daemon in a
// split: the classifier forwards those SYNs to the router's own services,
// TestRouterOwnTrafficNotIntercepted.)
func testDestinationPolicySplit(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	// Addresses of the server's beyond its subnet, routed by the router:
	// the metadata service and an ordinary destination per family.
	other := map[string]string{"ipv4": "192.0.2.2", "ipv6": "2001:db8::2"}
	for _, s := range []struct{ cidr, via string }{
		{metadataV4 + "/32", testbed.ServerV4}, {other["ipv4"] + "/32", testbed.ServerV4}, {other["ipv6"] + "/128", testbed.ServerV6},
	} {
		if err := b.Server.AddAddr("eth0", s.cidr); err != nil {
			t.Fatal(err)
		}
		if err := b.Router.Route(s.cidr, s.via); err != nil {
			t.Fatal(err)
		}
	}
	peerServer(t, b.Server, "[::]:7400")
	b.startPepsal("--iface", testbed.RouterClientIf, "--deny", "10.77.2.0/24", "--deny", "fd77:2::/64")
	wantRefused(t, b.Client, hostPort(metadataV4, 7400), "link-local (metadata) address")
	for _, f := range families {
		wantRefused(t, b.Client, hostPort(f.server, 7400), f.name+" server in a --deny prefix")
		if seen := peerSeen(t, b.Client, hostPort(other[f.name], 7400)); seen != f.routerServer {
			t.Errorf("%s: ordinary destination: the server saw %s, want the router %s (split)", f.name, seen, f.routerServer)
		}
	}
	checkDenied(t, b.status(), 5, map[string]uint64{"link_local": 1, "deny_prefix": 2})
}

// testDestinationPolicyWarm: a client behind a terminal that opens a
// connection to one of the gateway's own addresses (either side, IPv4 and
// IPv6) does not reach the gateway's services: the gateway resets the warm
// flow, which resets the client, and counts it. A link-local destination is
// refused by the terminal already; an ordinary one rides the warm path.
func testDestinationPolicyWarm(t *testing.T, cfg suite) {
	topo, _ := newPeerPair(t, cfg, 4)
	peerServer(t, topo.Gateway, "[::]:2222") // the gateway's own service, dual stack
	peerServer(t, topo.Server, "[::]:7400")
	for _, addr := range []string{testbed.GatewayServerV4, testbed.GatewayServerV6, testbed.GatewayLinkV4, testbed.GatewayLinkV6} {
		wantRefused(t, topo.Client, hostPort(addr, 2222), "the gateway's own address")
	}
	wantRefused(t, topo.Client, hostPort(metadataV4, 7400), "link-local (metadata) address")
	for _, f := range twoPEPFamilies {
		if seen := peerSeen(t, topo.Client, hostPort(f.server, 7400)); seen == f.client || seen == "" {
			t.Errorf("%s: ordinary destination: the server saw %q, want the gateway (split)", f.name, seen)
		}
	}
	g := peerStatus(t, topo.Gateway)
	checkDenied(t, g, 6, map[string]uint64{"own_address": 4})
	if served := g.Daemon.Peer.Gateway.Served; served != 6 {
		t.Errorf("gateway served %d warm flows, want 6 (4 refused, 2 relayed)", served)
	}
	checkDenied(t, peerStatus(t, topo.Terminal), 7, map[string]uint64{"link_local": 1})
}

// wantRefused dials addr from ns, sends a request and fails the test
// unless the connection is reset without a byte of answer.
func wantRefused(t *testing.T, ns *testbed.NS, addr, what string) {
	t.Helper()
	buf := make([]byte, 64)
	n := 0
	c, err := dial(ns, addr, 5*time.Second)
	if err == nil { // the reset may beat the dial's return, or the write, which then reports it
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err = c.Write([]byte("GET /\r\n")); err == nil {
			n, err = c.Read(buf)
		}
		c.Close()
	}
	if n != 0 || !isReset(err) {
		t.Errorf("%s %s: read %q, %v; want a reset", what, addr, buf[:n], err)
	}
}

// checkDenied: the daemon accepted accepted flows and refused those of
// byReason for their destination, as `pepsal status` says.
func checkDenied(t *testing.T, s status, accepted uint64, byReason map[string]uint64) {
	t.Helper()
	if s.Daemon == nil {
		t.Fatalf("status without a daemon: %s", s.DaemonNote)
	}
	st := s.Daemon.Stats
	var total uint64
	for _, n := range byReason {
		total += n
	}
	got := map[string]uint64{}
	for r, n := range st.DestDeniedByReason {
		if n > 0 {
			got[r] = n
		}
	}
	if st.Accepted != accepted || st.DestDenied != total || !maps.Equal(got, byReason) {
		t.Errorf("stats: %d accepted, %d refused for their destination %v; want %d, %d %v (%+v)",
			st.Accepted, st.DestDenied, got, accepted, total, byReason, st)
	}
}
