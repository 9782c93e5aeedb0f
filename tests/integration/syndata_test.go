// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"golang.org/x/sys/unix"
)

// spoofedNet is where the spoofed SYNs claim to come from: the router
// routes it to the client namespace, which owns none of it and forwards
// nothing, so nothing there ever answers; what comes back is captured on
// the client's interface.
const (
	spoofedNet = "10.77.9.0/24"
	spoofedSrc = "10.77.9.5"
)

// request is what the spoofed SYN carries.
var request = []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")

// reflection is what came back to the spoofed address for one SYN.
type reflection struct {
	segments int // distinct segments (a retransmission counts once)
	data     int // bytes of TCP payload, retransmissions included
}

// spoofedSYN sends one SYN carrying request from spoofedSrc to dst,
// with opts, and collects for window what comes back to it.
func spoofedSYN(t *testing.T, b *bed, dst string, dport int, opts []byte, window time.Duration) reflection {
	t.Helper()
	c := newRawTCP(t, b.Client, "eth0", spoofedSrc, dst, dport)
	if err := c.sendSeq(tcpSYN, c.isn, opts, request); err != nil {
		t.Fatal(err)
	}
	type seg struct {
		seq   uint32
		flags byte
		n     int
	}
	seen := map[seg]bool{}
	var r reflection
	buf := make([]byte, 65536)
	for end := time.Now().Add(window); time.Now().Before(end); {
		n, _, err := unix.Recvfrom(c.in, buf, 0)
		if err != nil {
			continue // the socket's 100 ms timeout
		}
		ip := buf[:n]
		if n < 20 || ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_TCP || !bytes.Equal(ip[16:20], c.src[:]) {
			continue
		}
		tcp := ip[int(ip[0]&0xf)*4 : int(binary.BigEndian.Uint16(ip[2:]))]
		if len(tcp) < 20 || binary.BigEndian.Uint16(tcp[2:]) != c.sport {
			continue
		}
		s := seg{binary.BigEndian.Uint32(tcp[4:]), tcp[13], len(tcp) - int(tcp[12]>>4)*4}
		r.data += s.n
		if !seen[s] {
			seen[s] = true
			r.segments++
		}
	}
	return r
}

// countAccepts accepts on addr in the server namespace, counts the
// connections, and answers any request with 256 KiB.
func countAccepts(t *testing.T, b *bed, addr string) *atomic.Int64 {
	t.Helper()
	var accepted atomic.Int64
	serve(t, b.Server, addr, func(c *net.TCPConn) {
		accepted.Add(1)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		if _, err := c.Read(buf); err != nil {
			return
		}
		io.Copy(c, io.LimitReader(zeros{}, 256<<10))
	})
	return &accepted
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// routeSpoofed makes the router send spoofedNet's traffic to the client namespace.
func routeSpoofed(t *testing.T, b *bed) {
	t.Helper()
	if err := b.Router.Route(spoofedNet, testbed.ClientV4); err != nil {
		t.Fatal(err)
	}
}

// synForms are the two ways a SYN carries data: with a cookie-less fast-open
// option (kind 34, length 2) and without any.
var synForms = []struct {
	name string
	opts []byte
}{
	{"fastopen_option", []byte{2, 4, 0x05, 0xb4, 34, 2, 1, 1}},
	{"plain_payload", []byte{2, 4, 0x05, 0xb4}},
}

// TestSpoofedSYNDataNotReflected (issue #22, 2): at a gateway, whose
// listeners take data in SYNs without a cookie, a SYN carrying a request
// from an address that never answers (and is not in --fastopen-from) is
// forwarded unsplit: no connection reaches the server from the gateway,
// and what comes back to the spoofed address is at most one segment (the
// server's SYN-ACK, which carries no data), not the reply.
func TestSpoofedSYNDataNotReflected(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8081)
	accepted := countAccepts(t, b, addr)
	routeSpoofed(t, b)
	b.startPepsal("--iface", testbed.RouterClientIf, "--role", "gateway", "--fastopen-from", "192.0.2.0/24", "--fastopen-from", "2001:db8::/32")
	base := b.status()
	for _, f := range synForms {
		r := spoofedSYN(t, b, testbed.ServerV4, 8081, f.opts, 3*time.Second)
		t.Logf("%s: %d segment(s), %d bytes of data back to the spoofed address; server accepted %d", f.name, r.segments, r.data, accepted.Load())
		if r.segments > 1 || r.data > 0 {
			t.Errorf("%s: %d segments and %d bytes of data reflected at the spoofed address, want at most one segment and no data", f.name, r.segments, r.data)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the server accepted %d connection(s) for spoofed SYNs, want 0", n)
	}
	after := b.status()
	if got := after.counter("syn_data_untrusted") - base.counter("syn_data_untrusted"); got != uint64(len(synForms)) {
		t.Errorf("syn_data_untrusted +%d, want +%d", got, len(synForms))
	}
	if got := after.counter("syn_diverted") - base.counter("syn_diverted"); got != 0 {
		t.Errorf("syn_diverted +%d, want 0", got)
	}
	// A SYN without data from the same address is still split (only the
	// data is withheld): a legitimate client keeps the gateway.
	if _, ok := admittedFrom(t, b, addr); !ok {
		t.Error("an ordinary connection was not split")
	}
}

// TestTrustedSYNDataSplit: from a --fastopen-from prefix the same SYN is
// split, its data taken from the SYN (the kernel's passive fast-open
// counter), which is what the terminals' link needs.
func TestTrustedSYNDataSplit(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8081)
	accepted := countAccepts(t, b, addr)
	routeSpoofed(t, b)
	b.startPepsal("--iface", testbed.RouterClientIf, "--role", "gateway", "--fastopen-from", spoofedNet)
	base := b.status()
	passive := netstat(t, b.Router, "TCPFastOpenPassive")
	r := spoofedSYN(t, b, testbed.ServerV4, 8081, synForms[0].opts, 3*time.Second)
	t.Logf("trusted: %d segment(s), %d bytes of data back; server accepted %d", r.segments, r.data, accepted.Load())
	if n := accepted.Load(); n != 1 {
		t.Errorf("the server accepted %d connection(s), want the gateway's 1", n)
	}
	if got := netstat(t, b.Router, "TCPFastOpenPassive") - passive; got != 1 {
		t.Errorf("TCPFastOpenPassive +%d, want +1", got)
	}
	after := b.status()
	if got := after.counter("syn_diverted") - base.counter("syn_diverted"); got != 1 {
		t.Errorf("syn_diverted +%d, want +1", got)
	}
	if got := after.counter("syn_data_untrusted") - base.counter("syn_data_untrusted"); got != 0 {
		t.Errorf("syn_data_untrusted +%d, want 0", got)
	}
}

// admittedFrom opens an ordinary connection from the client to addr (served
// by countAccepts) and says whether the gateway split it.
func admittedFrom(t *testing.T, b *bed, addr string) (*net.TCPConn, bool) {
	t.Helper()
	base := b.status().counter("syn_diverted")
	c := mustDial(t, b.Client, addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET\n")); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 256<<10 {
		t.Fatalf("reply: %d bytes, %v", n, err)
	}
	return c, b.status().counter("syn_diverted") == base+1
}

// TestFastOpenChildWindowAfterHandshake (issue #22, 2): where the kernel
// makes fast-open children pepsal did not ask for (net.ipv4.tcp_fastopen
// turned to take cookie-less data on every listener after the daemon
// started, so its classifier does not withhold SYN data), sock_ops holds a
// child's client-leg initial window until its handshake completes: a
// spoofed SYN gets at most the kernel's default window (10 segments) of
// the reply, not the 1000 asked; a real client's leg gets them once its
// ACK arrives (or, had its leg already sent data, the window is counted
// as refused late).
func TestFastOpenChildWindowAfterHandshake(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8082)
	countAccepts(t, b, addr)
	routeSpoofed(t, b)
	// Fast open on every listener, with cookies: nothing cookie-less when the daemon starts.
	if err := b.Router.Sysctl("net.ipv4.tcp_fastopen", fmt.Sprint(0x402)); err != nil {
		t.Fatal(err)
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--client-initcwnd", "1000")
	if err := b.Router.Sysctl("net.ipv4.tcp_fastopen", fmt.Sprint(0x602)); err != nil {
		t.Fatal(err)
	}
	base := b.status()
	passive := netstat(t, b.Router, "TCPFastOpenPassive")
	r := spoofedSYN(t, b, testbed.ServerV4, 8082, synForms[1].opts, 3*time.Second)
	t.Logf("spoofed: %d segment(s), %d bytes of data back", r.segments, r.data)
	if got := netstat(t, b.Router, "TCPFastOpenPassive") - passive; got != 1 {
		t.Fatalf("TCPFastOpenPassive +%d: the spoofed SYN made no fast-open child, nothing tested", got)
	}
	mid := b.status()
	delta := func(from, to status, name string) uint64 { return to.counter(name) - from.counter(name) }
	if d, set, late := delta(base, mid, "tune_iw_deferred"), delta(base, mid, "tune_init_cwnd"), delta(base, mid, "tune_iw_late"); d != 1 || set != 0 || late != 0 {
		t.Errorf("spoofed SYN: tune_iw_deferred +%d, tune_init_cwnd +%d, tune_iw_late +%d; want +1, 0, 0", d, set, late)
	}
	if r.data > 10*1460 {
		t.Errorf("%d bytes of the reply reflected at the spoofed address, want at most the default initial window (10 segments of 1460)", r.data)
	}

	if n := fastOpenGet(t, b.Client, testbed.ServerV4, 8082); n != 256<<10 {
		t.Fatalf("fast-open client: %d bytes, want %d", n, 256<<10)
	}
	end := b.status()
	t.Logf("real client: tune_iw_deferred +%d, tune_init_cwnd +%d, tune_iw_late +%d",
		delta(mid, end, "tune_iw_deferred"), delta(mid, end, "tune_init_cwnd"), delta(mid, end, "tune_iw_late"))
	if d, done := delta(mid, end, "tune_iw_deferred"), delta(mid, end, "tune_init_cwnd")+delta(mid, end, "tune_iw_late"); d != 1 || done != 1 {
		t.Errorf("real client: tune_iw_deferred +%d, tune_init_cwnd + tune_iw_late +%d; want +1, +1", d, done)
	}
}

// fastOpenGet connects from ns to host:port with "GET\n" in its SYN
// (cookie-less fast open) and returns how many bytes the reply had.
func fastOpenGet(t *testing.T, ns *testbed.NS, host string, port int) int {
	t.Helper()
	var n int
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); err != nil {
			return fmt.Errorf("TCP_FASTOPEN_NO_COOKIE: %w", err)
		}
		tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		sa := &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(host).As4()}
		if err := unix.Sendto(fd, []byte("GET\n"), unix.MSG_FASTOPEN, sa); err != nil {
			return fmt.Errorf("sendto MSG_FASTOPEN: %w", err)
		}
		buf := make([]byte, 64<<10)
		for {
			m, err := unix.Read(fd, buf)
			if err != nil {
				return fmt.Errorf("read after %d bytes: %w", n, err)
			}
			if m == 0 {
				return nil
			}
			n += m
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKernelFastOpenEverywhereChecked: a net.ipv4.tcp_fastopen that makes
// every listener take cookie-less data when the daemon starts has its
// classifier withhold SYN data, as the gateway role does: no role is needed
// for a spoofed SYN to be answered then.
func TestKernelFastOpenEverywhereChecked(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8083)
	accepted := countAccepts(t, b, addr)
	routeSpoofed(t, b)
	if err := b.Router.Sysctl("net.ipv4.tcp_fastopen", fmt.Sprint(0x603)); err != nil {
		t.Fatal(err)
	}
	b.startPepsal("--iface", testbed.RouterClientIf)
	base := b.status()
	r := spoofedSYN(t, b, testbed.ServerV4, 8083, synForms[1].opts, 2*time.Second)
	if r.segments > 1 || r.data > 0 || accepted.Load() != 0 {
		t.Errorf("%d segments, %d bytes of data reflected, the server accepted %d; want at most one segment, no data, nothing accepted", r.segments, r.data, accepted.Load())
	}
	if got := b.status().counter("syn_data_untrusted") - base.counter("syn_data_untrusted"); got != 1 {
		t.Errorf("syn_data_untrusted +%d, want +1", got)
	}
}
