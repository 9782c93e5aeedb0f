// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/testbed"
)

// needRoot skips the bridge tests without root, and under -short (make unit)
// even as root: they measure delay and goodput, which other test packages
// running alongside disturb. make test runs them one package at a time.
func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("measures the emulated link in network namespaces: runs in make test, not under -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

// newTopo builds client -- bridge(l) -- router -- server and returns the
// bridge too, for its counters. The namespaces go away whatever happens.
func newTopo(t *testing.T, l Link) (*testbed.Topology, *Bridge) {
	t.Helper()
	needRoot(t)
	var br *Bridge
	topo, err := testbed.NewTopology(testbed.Options{
		Prefix: "le",
		Middle: func(ns *testbed.NS, towardClient, towardRouter string) (io.Closer, error) {
			b, err := Start(ns, towardClient, towardRouter, l)
			if err != nil {
				return nil, err
			}
			br = b
			return b, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo, br
}

func listenTCP(t *testing.T, ns *testbed.NS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dialTCP(ns *testbed.NS, addr string) (c net.Conn, err error) {
	err = ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}

// serve runs handle on every accepted connection until the listener closes,
// and waits for the handlers at cleanup.
func serve(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func echo(c net.Conn) { io.Copy(c, c) }

func roundTrip(t *testing.T, ns *testbed.NS, addr string) {
	t.Helper()
	c, err := dialTCP(ns, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	msg := []byte("over the bridge")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo via %s: %q, %v", addr, got, err)
	}
}

// Plain bridging carries IPv4 and IPv6 (ARP and neighbour discovery
// included), and closing the topology leaves no goroutine behind.
func TestBridgePlainNoLeak(t *testing.T) {
	needRoot(t)
	before := runtime.NumGoroutine()
	func() {
		none, err := Profile("none")
		if err != nil {
			t.Fatal(err)
		}
		topo, err := testbed.NewTopology(testbed.Options{Prefix: "le", Middle: Middle(none)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { topo.Close() })
		ln4 := listenTCP(t, topo.Server, net.JoinHostPort(testbed.ServerV4, "7001"))
		ln6 := listenTCP(t, topo.Server, net.JoinHostPort(testbed.ServerV6, "7001"))
		var wg sync.WaitGroup
		for _, ln := range []net.Listener{ln4, ln6} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				echo(c)
			}()
		}
		roundTrip(t, topo.Client, net.JoinHostPort(testbed.ServerV4, "7001"))
		roundTrip(t, topo.Client, net.JoinHostPort(testbed.ServerV6, "7001"))
		ln4.Close()
		ln6.Close()
		wg.Wait()
		if err := topo.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The TCP handshake takes exactly one round trip: SYN up, SYN-ACK down.
func TestGeoRTT(t *testing.T) {
	if kmatrix.Emulated() {
		t.Skip("measures the emulator's timing, which an emulated CPU distorts")
	}
	geo, err := Profile("geo")
	if err != nil {
		t.Fatal(err)
	}
	topo, br := newTopo(t, geo)
	addr := net.JoinHostPort(testbed.ServerV4, "7002")
	serve(t, listenTCP(t, topo.Server, addr), func(net.Conn) {})
	// The first connect also resolves the router's MAC through the link.
	c, err := dialTCP(topo.Client, addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	want := geo.Down.Delay + geo.Up.Delay
	var rtts []time.Duration
	for range 5 {
		start := time.Now()
		c, err := dialTCP(topo.Client, addr)
		rtt := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		rtts = append(rtts, rtt)
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("geo connect RTT min %v median %v max %v (configured %v); bridge max lateness down %v up %v",
		rtts[0], rtts[2], rtts[4], want, br.Stats().Down.MaxLate, br.Stats().Up.MaxLate)
	// Never early; late by no more than 2% plus what the bridge itself saw
	// of its own lateness (a loaded machine runs its goroutines late, which
	// the emulator measures and reports: that is the machine, not the model).
	late := br.Stats().Down.MaxLate + br.Stats().Up.MaxLate
	for _, rtt := range rtts {
		if float64(rtt) < 0.98*float64(want) {
			t.Fatalf("RTT %v below the configured %v by more than 2%%", rtt, want)
		}
		if float64(rtt) > 1.02*float64(want)+float64(late) {
			t.Fatalf("RTT %v above the configured %v by more than 2%% and the bridge's own lateness %v", rtt, want, late)
		}
	}
}

// maxLateForRate: how late the bridge may run before a low goodput is the
// machine's load rather than the model (a 20 ms RTT link; its queue holds
// more than that).
const maxLateForRate = 10 * time.Millisecond

// A bulk TCP download must run at the configured rate, less header overhead.
func TestGoodput(t *testing.T) {
	if kmatrix.Emulated() {
		t.Skip("measures the emulator's timing, which an emulated CPU distorts")
	}
	const rate = 20e6
	dir := Dir{Delay: 10 * time.Millisecond, RateBps: rate}
	topo, br := newTopo(t, Link{Down: dir, Up: dir, Seed: 1})
	addr := net.JoinHostPort(testbed.ServerV4, "7003")
	chunk := make([]byte, 1<<16)
	serve(t, listenTCP(t, topo.Server, addr), func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	c, err := dialTCP(topo.Client, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Slow start and the first window reductions are over well before 5 s
	// at a 20 ms RTT; measure the steady state over the next 5 s.
	time.Sleep(5 * time.Second)
	b0, t0 := got.Load(), time.Now()
	time.Sleep(5 * time.Second)
	b1, t1 := got.Load(), time.Now()
	c.Close()
	<-done

	goodput := float64(b1-b0) * 8 / t1.Sub(t0).Seconds()
	// The link serializes whole Ethernet frames: a full segment is 1514 bytes
	// (14 Ethernet + 20 IPv4 + 20 TCP + 12 timestamp option + 1448 payload;
	// preamble and FCS are not modelled), so at most 1448/1514 of the rate is
	// payload. Pure ACKs travel the other direction and cost nothing here.
	want := rate * 1448 / 1514
	st := br.Stats().Down
	t.Logf("goodput %.3f Mbit/s, ceiling %.3f Mbit/s (%.2f%%); down: %v", goodput/1e6, want/1e6, 100*goodput/want, st)
	// Below the rate only if the bridge kept time: a machine too loaded to
	// run it on time (its own lateness says so) slows the link, not the model.
	if goodput < 0.95*want {
		if st.MaxLate > maxLateForRate {
			t.Logf("goodput below the rate, and the bridge ran up to %v late: the machine is loaded; the lower bound is not judged", st.MaxLate)
		} else {
			t.Fatalf("goodput %.3f Mbit/s more than 5%% below %.3f", goodput/1e6, want/1e6)
		}
	}
	// The 0.5% margin covers frames straddling the window edges only.
	if goodput > 1.005*want {
		t.Fatalf("goodput %.3f Mbit/s above the %.3f ceiling", goodput/1e6, want/1e6)
	}
	if st.KernelDrops != 0 || st.DropTx != 0 || st.Malformed != 0 {
		t.Fatalf("bridge lost frames outside the emulation: %v", st)
	}
}

// 100k UDP datagrams through 1% Bernoulli loss: the loss seen end to end, and
// by the bridge itself, must be 1% within 10%, and the two must agree.
func TestLossOnBridge(t *testing.T) {
	const (
		p     = 0.01
		count = 100_000
	)
	topo, br := newTopo(t, Link{Down: Dir{Loss: p}, Up: Dir{Loss: p}, Seed: 7})

	var srv net.PacketConn
	err := topo.Server.Do(func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
			})
			return errors.Join(err, serr)
		}}
		srv, err = lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort(testbed.ServerV4, "7004"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var received atomic.Int64
	seen := make([]bool, count)
	var warm atomic.Bool
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		buf := make([]byte, 2048)
		for {
			n, _, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 5 || buf[0] != 'D' {
				warm.Store(true)
				continue
			}
			seq := int(buf[1])<<24 | int(buf[2])<<16 | int(buf[3])<<8 | int(buf[4])
			if seq < count && !seen[seq] {
				seen[seq] = true
				received.Add(1)
			}
		}
	}()
	t.Cleanup(func() { srv.Close(); <-rdone })

	var cli net.Conn
	err = topo.Client.Do(func() (err error) {
		cli, err = net.Dial("udp4", net.JoinHostPort(testbed.ServerV4, "7004"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// Resolve neighbours first so that only data crosses the bridge below.
	for i := 0; !warm.Load(); i++ {
		if i == 200 {
			t.Fatal("no warm-up datagram arrived")
		}
		cli.Write([]byte("warm"))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	s0 := br.Stats().Up

	start := time.Now()
	pkt := make([]byte, 64)
	pkt[0] = 'D'
	for seq := range count {
		pkt[1], pkt[2], pkt[3], pkt[4] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
		if _, err := cli.Write(pkt); err != nil {
			t.Fatalf("send %d: %v", seq, err)
		}
		// Paced so that no queue outside the emulator (veth backlog, socket
		// buffers) overflows and adds loss of its own.
		if seq%100 == 99 {
			time.Sleep(time.Millisecond)
		}
	}
	sendTime := time.Since(start)
	for last := int64(-1); last != received.Load(); {
		last = received.Load()
		time.Sleep(200 * time.Millisecond)
	}
	s1 := br.Stats().Up

	in, lost := s1.FramesIn-s0.FramesIn, s1.DropLoss-s0.DropLoss
	e2e := float64(count-received.Load()) / count
	bridge := float64(lost) / float64(in)
	t.Logf("sent %d in %v, received %d: end-to-end loss %.3f%%, bridge %d/%d = %.3f%%; up: %v",
		count, sendTime.Round(time.Millisecond), received.Load(), 100*e2e, lost, in, 100*bridge, s1)
	for what, r := range map[string]float64{"end-to-end": e2e, "bridge": bridge} {
		if math.Abs(r-p) > p/10 {
			t.Errorf("%s loss %.4f, want %.4f ±10%%", what, r, p)
		}
	}
	// Besides the datagrams, the client may send a router solicitation or an
	// ARP probe meanwhile; those few frames are the only slack allowed.
	other := int64(in) - count
	if missing := int64(count) - received.Load(); other < 0 || other > 10 || missing > int64(lost) || missing < int64(lost)-other {
		t.Errorf("bridge saw %d frames and dropped %d, but %d of %d datagrams arrived", in, lost, received.Load(), count)
	}
	if s1.KernelDrops != 0 || s1.DropTx != 0 || s1.DropQueue != 0 {
		t.Errorf("drops outside the loss model: %v", s1)
	}
}

// The bridged interfaces must end up without offloads, read back with the
// legacy ethtool get commands.
func TestOffloadsOff(t *testing.T) {
	topo, _ := newTopo(t, Link{})
	err := topo.Link.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, ifname := range []string{"m-cli", "m-rtr"} {
			for name, cmd := range map[string]uint32{
				"tso": unix.ETHTOOL_GTSO, "gso": unix.ETHTOOL_GGSO, "gro": unix.ETHTOOL_GGRO,
				"tx-checksum": unix.ETHTOOL_GTXCSUM, "rx-checksum": unix.ETHTOOL_GRXCSUM,
			} {
				ev := &ethtoolValue{cmd: cmd}
				ifr := &ifreqData{data: unsafe.Pointer(ev)}
				copy(ifr.name[:], ifname)
				_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
				runtime.KeepAlive(ifr)
				if e != 0 {
					return fmt.Errorf("get %s on %s: %w", name, ifname, e)
				}
				if ev.data != 0 {
					t.Errorf("%s still on for %s", name, ifname)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
