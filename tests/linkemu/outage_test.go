// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// An outage on a running bridge, armed by the test: datagrams sent well
// before and well after it all arrive, the ones in between are lost, and the
// bridge counts exactly those as lost to the outage. The margins (300 ms) are
// there for a loaded machine; the counters are checked exactly.
func TestOutageOnBridge(t *testing.T) {
	const (
		start, length = time.Second, time.Second
		margin        = 300 * time.Millisecond
		gap           = 5 * time.Millisecond
		total         = 3 * time.Second
	)
	l := Link{Down: Dir{Delay: 5 * time.Millisecond}, Up: Dir{Delay: 5 * time.Millisecond}, Seed: 1,
		Schedule: &Schedule{Outages: []Outage{{Start: start, Len: length}}}}
	topo, br := newTopo(t, l)
	srv := listenUDP(t, topo.Server, net.JoinHostPort(testbed.ServerV4, "7005"))
	var (
		mu   sync.Mutex
		seen = map[int]bool{}
		warm atomic.Bool
	)
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		buf := make([]byte, 64)
		for {
			n, _, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			if n != 5 || buf[0] != 'D' {
				warm.Store(true)
			} else {
				mu.Lock()
				seen[int(buf[1])<<24|int(buf[2])<<16|int(buf[3])<<8|int(buf[4])] = true
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { srv.Close(); <-rdone })
	cli := dialUDP(t, topo.Client, net.JoinHostPort(testbed.ServerV4, "7005"))
	// Neighbour resolution first; it may meet the outage as counted from the
	// bridge's start, so it tries for longer than that.
	for i := 0; !warm.Load(); i++ {
		if i == 500 {
			t.Fatal("no warm-up datagram crossed the bridge")
		}
		_, _ = cli.Write([]byte("warm"))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	s0 := br.Stats().Up

	// The schedule restarts now: the outage is 1-2 s from here.
	armed := br.Arm()
	var sentAt []time.Duration
	pkt := []byte{'D', 0, 0, 0, 0}
	for seq := 0; time.Since(armed) < total; seq++ {
		pkt[1], pkt[2], pkt[3], pkt[4] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
		sentAt = append(sentAt, time.Since(armed))
		if _, err := cli.Write(pkt); err != nil {
			t.Fatalf("send %d: %v", seq, err)
		}
		time.Sleep(gap)
	}
	time.Sleep(200 * time.Millisecond)
	s1 := br.Stats().Up
	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for seq, at := range sentAt {
		switch {
		case seen[seq]:
			if at > start+margin && at < start+length-margin {
				t.Errorf("datagram %d sent %v after arming crossed the outage", seq, at)
			}
		default:
			lost++
			if at < start-margin || at > start+length+margin {
				t.Errorf("datagram %d sent %v after arming lost outside the outage", seq, at)
			}
		}
	}
	dropped := int(s1.DropOutage - s0.DropOutage)
	t.Logf("sent %d, lost %d, bridge counted %d lost to the outage; up: %v", len(sentAt), lost, dropped, s1)
	if lost == 0 || dropped != lost {
		t.Errorf("%d datagrams lost, the bridge counted %d outage drops", lost, dropped)
	}
	if s1.DropLoss != 0 || s1.DropBurst != 0 || s1.DropQueue != 0 {
		t.Errorf("drops other than the outage's: %v", s1)
	}
}

func listenUDP(t *testing.T, ns *testbed.NS, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	if err := ns.Do(func() (err error) { c, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialUDP(t *testing.T, ns *testbed.NS, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.Dial("udp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
