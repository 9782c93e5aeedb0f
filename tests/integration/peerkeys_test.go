// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/report"
)

// Each terminal its own key (issue #22): a gateway's --peer-key may be a
// key ring of `ID KEY [clients=...]` lines, read again when it changes.

var (
	ringKeyA = strings.Repeat("A", 44)
	ringKeyB = strings.Repeat("B", 44)
	ringKeyC = strings.Repeat("C", 44)
)

// writeRingFile replaces path with data (mode 600), by rename as an
// editor or a configuration tool does.
func writeRingFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// gatewayTerminal is id's part of the gateway's status.
func gatewayTerminal(s report.PeerStats, id string) report.PeerTerminalStats {
	for _, ts := range s.Gateway.Terminals {
		if ts.ID == id {
			return ts
		}
	}
	return report.PeerTerminalStats{}
}

// refusedAuth tells whether the gateway refuses key of id on a new
// connection from the terminal's namespace.
func refusedAuth(t *testing.T, topo *testbed.TwoPEP, key, id string) error {
	t.Helper()
	c, hello := peerClient(t, topo.Terminal)
	defer c.Close()
	auth, err := peer.EncodeAuth([]byte(key), id, hello)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(auth)
	return closedByGateway(c, 15*time.Second)
}

// TestPeerKeyring: two terminals with keys of their own on one gateway
// (--transparent). The real terminal (site-a, clients= its LAN) splits its
// client's flows on warm connections, dialed from the client's address.
// site-c, whose clients= does not hold that address, is refused when it
// names it. site-b, revoked by editing the key file while the gateway
// runs, loses its pooled connection and is refused from then on; site-a
// keeps working, its pool never refused.
func TestPeerKeyring(t *testing.T) {
	const pool = 4
	topo := newPeerTopo(t)
	ring := filepath.Join(t.TempDir(), "ring")
	writeRingFile(t, ring, fmt.Sprintf("# terminals\nsite-a %s clients=%s/24,%s/64\nsite-b %s\nsite-c %s clients=192.0.2.0/24\n",
		ringKeyA, testbed.TPClientV4, testbed.TPClientV6, ringKeyB, ringKeyC))
	own := writeKey(t, []byte("site-a "+ringKeyA+"\n"), 0o600)
	startPeerGateway(t, defaultSuite(), topo, ring, "--transparent")
	startPeerTerminal(t, defaultSuite(), topo, own, pool)
	poolFull := func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool }
	waitPeer(t, topo.Terminal, "pool full", poolFull)
	var seen atomic.Int32
	serve(t, topo.Server, hostPort(testbed.TPServerV4, 7402), func(c *net.TCPConn) { seen.Add(1); c.Close() })
	works := func(when string, port int) {
		t.Helper()
		for _, f := range twoPEPFamilies {
			peerServer(t, topo.Server, hostPort(f.server, port))
			if got := peerSeen(t, topo.Client, hostPort(f.server, port)); got != f.client {
				t.Errorf("%s, %s: the server saw %s, want the client %s", when, f.name, got, f.client)
			}
		}
	}
	works("before", 7300)

	// site-c names a client outside its clients=: refused, nothing dialed.
	c, hello, _ := peerAuthed(t, topo.Terminal, []byte(ringKeyC), "site-c")
	hdr, err := peer.EncodeHeader([]byte(ringKeyC), hello, netip.MustParseAddrPort(hostPort(testbed.TPServerV4, 7402)),
		netip.MustParseAddrPort(hostPort(testbed.TPClientV4, 40001)), 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(hdr)
	if err := closedByGateway(c, 15*time.Second); err != nil {
		t.Errorf("site-c naming a client outside its prefixes: %v", err)
	}
	// site-b authenticates and waits in the pool; then its key goes.
	pooled, _, _ := peerAuthed(t, topo.Terminal, []byte(ringKeyB), "site-b")
	pooled.SetDeadline(time.Time{})
	writeRingFile(t, ring, fmt.Sprintf("site-a %s clients=%s/24,%s/64\nsite-c %s clients=192.0.2.0/24\n",
		ringKeyA, testbed.TPClientV4, testbed.TPClientV6, ringKeyC))
	waitPeer(t, topo.Gateway, "key file reloaded", func(p report.PeerStats) bool { return p.Gateway.KeyReloads >= 1 })
	if err := closedByGateway(pooled, 15*time.Second); err != nil {
		t.Errorf("site-b's pooled connection after its key was removed: %v", err)
	}
	if err := refusedAuth(t, topo, ringKeyB, "site-b"); err != nil {
		t.Errorf("site-b after its key was removed: %v", err)
	}
	if err := refusedAuth(t, topo, ringKeyA, "nobody"); err != nil {
		t.Errorf("an id the key file never held: %v", err)
	}
	waitPeer(t, topo.Terminal, "pool full", poolFull)
	works("after", 7301)

	p := *peerStatus(t, topo.Gateway).Daemon.Peer
	g, a, b, cs := p.Gateway, gatewayTerminal(p, "site-a"), gatewayTerminal(p, "site-b"), gatewayTerminal(p, "site-c")
	if g.Refused[report.AuthClientDeny] != 1 || g.Refused[report.AuthRevoked] != 2 || g.Refused[report.AuthUnknownID] != 1 ||
		cs.Refused[report.AuthClientDeny] != 1 || !b.Revoked || b.RevokedClosed != 1 || b.Refused[report.AuthRevoked] != 1 ||
		a.Revoked || a.Served != 4 || len(a.Clients) != 2 {
		t.Errorf("gateway %+v\nterminals %+v", g, g.Terminals)
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("the server saw %d connections from site-c's refused flow", n)
	}
	if tp := peerStatus(t, topo.Terminal).Daemon.Peer.Pool; tp.DialFailures != 0 || tp.Taken != 4 {
		t.Errorf("site-a's pool %+v: want its 4 flows on warm connections, no dial refused", tp)
	}
}
