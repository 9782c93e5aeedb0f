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

// udpRun is what crossed a bridge running l (its schedule held until the
// run starts): when each datagram was sent after the arming, which arrived,
// and the up direction's counters over the run.
type udpRun struct {
	sentAt []time.Duration
	seen   map[int]bool
	st     DirStats // s1 - s0 for the drop counters
	// others counts frames offered to the link during the run that were not
	// the test's datagrams: a guest kernel's IPv6 neighbour discovery and
	// MLD reports can meet the schedule too.
	others int
}

// runUDP warms the path up, arms the schedule and sends a numbered datagram
// every gap for total.
func runUDP(t *testing.T, l Link, gap, total time.Duration) udpRun {
	t.Helper()
	l.Schedule.WaitArm = true // neighbour resolution must not meet the schedule
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
				continue
			}
			mu.Lock()
			seen[int(buf[1])<<24|int(buf[2])<<16|int(buf[3])<<8|int(buf[4])] = true
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { srv.Close(); <-rdone })
	cli := dialUDP(t, topo.Client, net.JoinHostPort(testbed.ServerV4, "7005"))
	for i := 0; !warm.Load(); i++ {
		if i == 200 {
			t.Fatal("no warm-up datagram crossed the bridge")
		}
		_, _ = cli.Write([]byte("warm"))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	s0 := br.Stats().Up

	armed := br.Arm()
	var r udpRun
	pkt := []byte{'D', 0, 0, 0, 0}
	for seq := 0; time.Since(armed) < total; seq++ {
		pkt[1], pkt[2], pkt[3], pkt[4] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
		r.sentAt = append(r.sentAt, time.Since(armed))
		if _, err := cli.Write(pkt); err != nil {
			t.Fatalf("send %d: %v", seq, err)
		}
		time.Sleep(gap)
	}
	time.Sleep(200 * time.Millisecond)
	s1 := br.Stats().Up
	mu.Lock()
	r.seen = seen
	mu.Unlock()
	r.st = s1
	r.others = int(s1.FramesIn-s0.FramesIn) - len(r.sentAt)
	r.st.DropLoss -= s0.DropLoss
	r.st.DropQueue -= s0.DropQueue
	r.st.DropOutage -= s0.DropOutage
	r.st.DropBurst -= s0.DropBurst
	return r
}

// lostIn counts the datagrams lost among those sent in [from, to), and
// how many were sent there.
func (r udpRun) lostIn(from, to time.Duration) (lost, sent int) {
	for seq, at := range r.sentAt {
		if at >= from && at < to {
			sent++
			if !r.seen[seq] {
				lost++
			}
		}
	}
	return lost, sent
}

// An outage on a running bridge, armed by the test: datagrams sent well
// before and well after it all arrive, the ones in between are lost, and the
// bridge counts exactly those as lost to the outage. The margins (300 ms) are
// there for a loaded machine; the counters are checked exactly.
func TestOutageOnBridge(t *testing.T) {
	const (
		start, length = time.Second, time.Second
		margin        = 300 * time.Millisecond
	)
	l := Link{Down: Dir{Delay: 5 * time.Millisecond}, Up: Dir{Delay: 5 * time.Millisecond}, Seed: 1,
		Schedule: &Schedule{Outages: []Outage{{Start: start, Len: length}}}}
	r := runUDP(t, l, 5*time.Millisecond, 3*time.Second)
	lost, _ := r.lostIn(0, time.Hour)
	t.Logf("sent %d, lost %d; up: %v", len(r.sentAt), lost, r.st)
	if l, n := r.lostIn(0, start-margin); l != 0 {
		t.Errorf("%d of %d datagrams sent before the outage lost", l, n)
	}
	if l, n := r.lostIn(start+length+margin, time.Hour); l != 0 {
		t.Errorf("%d of %d datagrams sent after the outage lost", l, n)
	}
	if l, n := r.lostIn(start+margin, start+length-margin); l != n || n == 0 {
		t.Errorf("%d of %d datagrams sent during the outage lost, want all", l, n)
	}
	if !r.dropsMatch(lost, r.st.DropOutage) {
		t.Errorf("%d datagrams lost, the bridge counted %d outage drops (%d other frames crossed)", lost, r.st.DropOutage, r.others)
	}
	if r.st.DropLoss != 0 || r.st.DropBurst != 0 || r.st.DropQueue != 0 {
		t.Errorf("drops other than the outage's: %v", r.st)
	}
}

// A handover's loss burst: about its share of the datagrams sent during it
// are lost, none outside it, and the bridge counts exactly those.
func TestHandoverBurstOnBridge(t *testing.T) {
	const (
		first, burst = 500 * time.Millisecond, time.Second
		margin       = 200 * time.Millisecond
	)
	l := Link{Down: Dir{Delay: 5 * time.Millisecond}, Up: Dir{Delay: 5 * time.Millisecond}, Seed: 1,
		Schedule: &Schedule{Handovers: &Handovers{First: first, Period: time.Hour, Steps: []Step{
			{}, {Burst: burst, BurstLoss: 0.3, Delay: 10 * time.Millisecond},
		}}}}
	r := runUDP(t, l, 2*time.Millisecond, 2*time.Second)
	lost, _ := r.lostIn(0, time.Hour)
	t.Logf("sent %d, lost %d; up: %v", len(r.sentAt), lost, r.st)
	if l, n := r.lostIn(0, first-margin); l != 0 {
		t.Errorf("%d of %d datagrams sent before the burst lost", l, n)
	}
	if l, n := r.lostIn(first+burst+margin, time.Hour); l != 0 {
		t.Errorf("%d of %d datagrams sent after the burst lost", l, n)
	}
	if l, n := r.lostIn(first+margin, first+burst-margin); n < 100 || float64(l) < 0.15*float64(n) || float64(l) > 0.45*float64(n) {
		t.Errorf("%d of %d datagrams sent during the 30%% burst lost", l, n)
	}
	if !r.dropsMatch(lost, r.st.DropBurst) {
		t.Errorf("%d datagrams lost, the bridge counted %d burst drops (%d other frames crossed)", lost, r.st.DropBurst, r.others)
	}
	if r.st.DropLoss != 0 || r.st.DropOutage != 0 || r.st.DropQueue != 0 {
		t.Errorf("drops other than the burst's: %v", r.st)
	}
}

// dropsMatch says whether the bridge's count of drops accounts for the lost
// datagrams exactly, allowing only for frames that were not the test's.
func (r udpRun) dropsMatch(lost int, drops uint64) bool {
	return lost > 0 && int(drops) >= lost && int(drops) <= lost+r.others
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
