// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pepsal/pepsal/tests/testbed"
	"golang.org/x/sys/unix"
)

// testSynCookiesSplit: with tcp_syncookies=2 the router answers every SYN
// with a cookie and keeps no half-open socket; the client's ACK must still
// reach the proxy, which makes the connection and splits it. Before, the
// classifier forwarded the ACK to the server, which reset it: 10 of 10.
func testSynCookiesSplit(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	if err := b.Router.Sysctl("net.ipv4.tcp_syncookies", "2"); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		transferServer(t, b.Server, hostPort(f.server, 9000))
	}
	// Initial windows: sock_ops must know the cookie's connection as a leg.
	b.startPepsal("--iface", testbed.RouterClientIf, "--client-initcwnd", "40", "--server-initcwnd", "50")
	const n = 10
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		f := families[i%2]
		wg.Go(func() {
			if err := transfer(b.Client, hostPort(f.server, 9000), 100<<10, 300<<10, uint64(i)+700); err != nil {
				errs <- fmt.Errorf("conn %d (%s): %w", i, f.name, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := b.daemonStatus()
	l := s.Daemon.Listen
	t.Logf("ack_cookie_steered %d, listen %+v", s.counter("ack_cookie_steered"), l)
	if s.Daemon.Stats.Accepted != n {
		t.Errorf("accepted %d, want all %d split", s.Daemon.Stats.Accepted, n)
	}
	// Each connection's handshake was a cookie's: its ACK steered by the
	// classifier, its cookie sent and found valid by the listener.
	if got := s.counter("ack_cookie_steered"); got < n {
		t.Errorf("ack_cookie_steered %d, want at least %d", got, n)
	}
	if l.CookiesSent < n || l.CookiesRecv < n || l.Unreadable != "" {
		t.Errorf("listen %+v: want at least %d cookies sent and received", l, n)
	}
	if got := s.counter("cookie_stale_forwarded"); got != 0 {
		t.Errorf("cookie_stale_forwarded %d, want 0", got)
	}
	// sock_ops tuned both legs of each (it knows the client leg by its
	// SYN's record), and the daemon took each record at accept (it reads
	// the SYN's ToS there): none is left.
	if got := s.counter("tune_init_cwnd"); got != 2*n {
		t.Errorf("tune_init_cwnd %d, want %d (both legs of each)", got, 2*n)
	}
	if got := divertedEntries(t, b); got != 0 {
		t.Errorf("%d pepsal_diverted entries left after every connection was accepted", got)
	}
}

// divertedEntries counts the router's pepsal_diverted entries.
func divertedEntries(t *testing.T, b *bed) int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(b.Router.Path(), &st); err != nil {
		t.Fatal(err)
	}
	out, err := b.Router.Command("bpftool", "-j", "map", "dump", "pinned", fmt.Sprintf("/sys/fs/bpf/pepsal/netns-%d/pepsal_diverted", st.Ino)).Output()
	if err != nil {
		t.Fatalf("bpftool map dump pepsal_diverted: %v", err)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("pepsal_diverted dump: %v: %s", err, out)
	}
	return len(entries)
}

// Flood: SYNs from an address of the client's LAN that no host has, so
// the router's SYN-ACKs to it die unanswered at its ARP (the client
// namespace does not own it and would otherwise reset them).
const (
	floodSource    = "10.77.1.200"
	floodFirst     = 300 // fills the 128 backlog and sends cookies
	floodDuring    = 300 // more while the legitimate clients connect
	floodBurst     = 20
	floodSomaxconn = 128 // the router's net.core.somaxconn: the backlog
)

// testSynFloodNeverResets: under a bounded SYN flood from one LAN address
// (random source ports) that overflows the proxy's SYN queue, new
// legitimate connections made during the flood split or pass unsplit,
// never reset: those answered with cookies have their ACKs steered to the
// proxy.
func testSynFloodNeverResets(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	// A short queue, as somaxconn makes it: pepsal asks more, says that
	// the sysctl caps it, and leaves it.
	for k, v := range map[string]string{"net.ipv4.tcp_syncookies": "1", "net.core.somaxconn": fmt.Sprint(floodSomaxconn)} {
		if err := b.Router.Sysctl(k, v); err != nil {
			t.Fatal(err)
		}
	}
	transferServer(t, b.Server, hostPort(testbed.ServerV4, 9000))
	d := b.startPepsal("--iface", testbed.RouterClientIf, "--max-conns", "1000")
	if got := b.daemonInfo().Listen.Backlog; got != floodSomaxconn {
		t.Fatalf("listen backlog %d, want somaxconn's %d", got, floodSomaxconn)
	}
	if !strings.Contains(d.Output(), "net.core.somaxconn caps") {
		t.Errorf("the daemon did not say that somaxconn caps its backlog:\n%s", d.Output())
	}
	if v, err := b.Router.ReadSysctl("net.core.somaxconn"); err != nil || v != fmt.Sprint(floodSomaxconn) {
		t.Errorf("somaxconn %q, %v: pepsal changed it", v, err)
	}
	server := netip.MustParseAddrPort(hostPort(testbed.ServerV4, 9000))
	flood := newSynFlood(b.Client, netip.MustParseAddr(floodSource), server)
	flood.send(t, floodFirst)

	const n = 10
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := transfer(b.Client, server.String(), 20<<10, 50<<10, uint64(i)+900); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		})
	}
	for sent := 0; sent < floodDuring; sent += floodBurst {
		flood.send(t, floodBurst)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err) // a reset among them is the bug
	}
	s := b.daemonStatus()
	l := s.Daemon.Listen
	t.Logf("accepted %d (split), ack_cookie_steered %d, syn_diverted %d, listen %+v",
		s.Daemon.Stats.Accepted, s.counter("ack_cookie_steered"), s.counter("syn_diverted"), l)
	// The flood overflowed the queue: cookies were sent (so the test is
	// not vacuous), and legitimate connections went through them.
	if l.CookiesSent < floodFirst-floodSomaxconn {
		t.Errorf("%d SYN cookies sent, want at least %d: the flood did not overflow the queue", l.CookiesSent, floodFirst-floodSomaxconn)
	}
	if s.counter("ack_cookie_steered") == 0 || l.CookiesRecv == 0 {
		t.Errorf("no legitimate connection went through a cookie (ack_cookie_steered %d, cookies received %d)", s.counter("ack_cookie_steered"), l.CookiesRecv)
	}
	if s.Daemon.Stats.Reset != 0 {
		t.Errorf("%d split connections reset", s.Daemon.Stats.Reset)
	}
}

// synFlood sends raw SYNs from one address and random source ports, from a
// namespace (IPv4, IP_HDRINCL: the source is not the namespace's).
type synFlood struct {
	ns       *testbed.NS
	src, dst netip.AddrPort
	rng      *rand.Rand
}

func newSynFlood(ns *testbed.NS, src netip.Addr, dst netip.AddrPort) *synFlood {
	return &synFlood{ns: ns, src: netip.AddrPortFrom(src, 0), dst: dst, rng: rand.New(rand.NewPCG(7, 11))}
}

// send sends count SYNs, each from a new random port.
func (f *synFlood) send(t *testing.T, count int) {
	t.Helper()
	err := f.ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Addr: f.dst.Addr().As4()}
		for range count {
			sport := uint16(1024 + f.rng.IntN(60000))
			if err := unix.Sendto(fd, synPacket(f.src.Addr(), f.dst.Addr(), sport, f.dst.Port(), f.rng.Uint32()), 0, to); err != nil {
				return fmt.Errorf("send SYN: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// synPacket is an IPv4 SYN with an MSS option and a valid TCP checksum
// (the kernel fills in the IP checksum and length).
func synPacket(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	p := make([]byte, 20+24)
	ip, tcp := p[:20], p[20:]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 6<<4, 0x02 // data offset 6 words, SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	tcp[20], tcp[21] = 2, 4 // MSS
	binary.BigEndian.PutUint16(tcp[22:], 1460)
	// Checksum over the pseudo-header and the segment.
	sum := uint32(0)
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	add(s4[:])
	add(d4[:])
	sum += unix.IPPROTO_TCP + uint32(len(tcp))
	add(tcp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
	return p
}
