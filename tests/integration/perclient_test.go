// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// secondClientV4 is another host of the client's LAN, in the client namespace.
const secondClientV4 = "10.77.1.3"

// admittedAs opens a connection from src to peerServer at addr and says
// whether it was split (the server saw the router) or forwarded unsplit (it
// saw src); either way it must work: greeting and echo.
func admittedAs(t *testing.T, b *bed, src, addr string) (*net.TCPConn, bool) {
	t.Helper()
	var c net.Conn
	err := b.Client.Do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		d.SetMultipathTCP(false)
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	peer, err := readLine(c)
	if err != nil {
		t.Fatalf("greeting from %s: %v (reset: %v)", src, err, isReset(err))
	}
	if _, err := c.Write([]byte("still there\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got, err := readLine(c); err != nil || got != "still there" {
		t.Fatalf("echo %q: %v", got, err)
	}
	switch peer {
	case testbed.RouterServerV4:
		return c.(*net.TCPConn), true
	case src:
		return c.(*net.TCPConn), false
	}
	t.Fatalf("server saw %q, neither the router nor %s", peer, src)
	return nil, false
}

// TestPerClientLimitFailsOpen (issue #22, 8): one client address holds at
// most --max-conns-per-client split connections; its next one is forwarded
// unsplit (and works), while another client address is still split; below
// the client's low-water mark its connections are split again. The
// counter and the status say so.
func TestPerClientLimitFailsOpen(t *testing.T) {
	b := newBed(t, defaultSuite())
	if err := b.Client.AddAddr("eth0", secondClientV4+"/24"); err != nil {
		t.Fatal(err)
	}
	addr := hostPort(testbed.ServerV4, 8090)
	peerServer(t, b.Server, addr)
	const limit = 3 // low water: 2
	b.startPepsal("--iface", testbed.RouterClientIf, "--max-conns-per-client", "3")
	base := b.status()

	var busy []*net.TCPConn
	for i := range limit {
		c, split := admittedAs(t, b, testbed.ClientV4, addr)
		if !split {
			t.Fatalf("connection %d of %d of the busy client was not split", i+1, limit)
		}
		busy = append(busy, c)
	}
	waitClientsAtLimit(t, b, 1)
	if _, split := admittedAs(t, b, testbed.ClientV4, addr); split {
		t.Fatal("the busy client's connection past its limit was split")
	}
	if _, split := admittedAs(t, b, secondClientV4, addr); !split {
		t.Fatal("another client's connection was not split while the busy one is at its limit")
	}
	after := b.status()
	if got := after.counter("syn_bypass_source") - base.counter("syn_bypass_source"); got != 1 {
		t.Errorf("syn_bypass_source +%d, want +1", got)
	}
	if s := after.Daemon.Stats; s.MaxConnsPerClient != limit || s.ClientsAtLimit != 1 || s.ClientLimitTrips != 1 || s.Full {
		t.Errorf("status: per client %d, %d at it, reached %d times, full %v; want %d, 1, 1, not full",
			s.MaxConnsPerClient, s.ClientsAtLimit, s.ClientLimitTrips, s.Full, limit)
	}
	// Below the low-water mark (2) the busy client is split again.
	busy[0].Close()
	busy[1].Close()
	waitClientsAtLimit(t, b, 0)
	if _, split := admittedAs(t, b, testbed.ClientV4, addr); !split {
		t.Fatal("the busy client was not split again below its low-water mark")
	}
}

// waitClientsAtLimit waits until the daemon counts n client addresses at
// their limit (closes take effect when the relay sees them).
func waitClientsAtLimit(t *testing.T, b *bed, n int) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if b.daemonInfo().Stats.ClientsAtLimit == n {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the daemon never counted %d client(s) at their limit", n)
		}
	}
}
