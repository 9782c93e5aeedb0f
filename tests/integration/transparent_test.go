// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/outage"
	"golang.org/x/sys/unix"
)

// testTransparent: with --transparent the server sees the client's own
// address and port, and data, half-close and resets behave as without it.
func testTransparent(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		serve(t, b.Server, hostPort(f.server, 8600), func(c *net.TCPConn) {
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			req, err := io.ReadAll(c) // until the client's FIN (half-close)
			if err != nil {
				return
			}
			c.Write(bytes.Repeat(req, 1000)) // then a reply much larger than the request
		})
		transferServer(t, b.Server, hostPort(f.server, 9000))
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--transparent")
	if s := b.status(); s.counter("syn_diverted") != 0 {
		t.Fatalf("status before traffic: %+v", s)
	}
	for _, f := range families {
		c := mustDial(t, b.Client, hostPort(f.server, 8600))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		seen, err := readLine(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := c.LocalAddr().String(); seen != want {
			t.Errorf("%s: server saw %s, want the client itself %s", f.name, seen, want)
		}
		c.Write([]byte("half-close "))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte("half-close "), 1000)) {
			t.Errorf("%s: reply after half-close: %d bytes, %v", f.name, len(got), err)
		}
		if err := transfer(b.Client, hostPort(f.server, 9000), 2<<20, 3<<20, 9); err != nil {
			t.Errorf("%s transfer: %v", f.name, err)
		}
		// A reset from the client reaches the server as a reset.
		r := mustDial(t, b.Client, hostPort(f.server, 8600))
		r.SetDeadline(time.Now().Add(5 * time.Second))
		readLine(r)
		r.SetLinger(0)
		r.Close()
	}
	s := b.status()
	if got := s.counter("syn_diverted"); got != 6 {
		t.Errorf("syn_diverted = %d, want 6 (the replies from the server side are not new connections)", got)
	}
	if got := s.counter("syn_bypass_return_iface"); got != 0 {
		t.Errorf("syn_bypass_return_iface = %d: no SYN came from the server side", got)
	}
	if s.Daemon == nil || s.Daemon.Stats.Reset < 2 {
		t.Errorf("daemon stats %+v: want the 2 client resets propagated", s.Daemon)
	}
}

// testTransparentPathMTU: with --transparent the server leg sends from the
// client's address, so an ICMP "fragmentation needed" (IPv6: packet too big)
// from the server side is addressed to the client. The classifier delivers
// it to the server leg, whose path MTU drops (TCP_INFO's pmtu, read with
// ss), instead of letting the router forward it to the client.
func testTransparentPathMTU(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	mtus := map[string]int{"ipv4": 1200, "ipv6": 1280}
	for i, f := range families {
		port := 8610 + i
		got := make(chan string, 1)
		serve(t, b.Server, hostPort(f.server, port), func(c *net.TCPConn) {
			line, _ := readLine(c)
			got <- line
			io.Copy(io.Discard, c)
		})
		seen := captureTCP(t, b.Server, f, port)
		if i == 0 {
			b.startPepsal("--iface", testbed.RouterClientIf, "--transparent")
		}
		c := mustDial(t, b.Client, hostPort(f.server, port))
		if _, err := c.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		if line := <-got; line != "hello" {
			t.Fatalf("%s: server read %q", f.name, line)
		}
		if pmtu := serverLegPMTU(t, b, f, port); pmtu != 1500 {
			t.Fatalf("%s: server leg's pmtu %d before the error, want the link's 1500", f.name, pmtu)
		}
		sendTooBig(t, b.Server, f, <-seen, mtus[f.name])
		deadline := time.Now().Add(5 * time.Second)
		for serverLegPMTU(t, b, f, port) != mtus[f.name] && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if pmtu := serverLegPMTU(t, b, f, port); pmtu != mtus[f.name] {
			t.Errorf("%s: server leg's pmtu %d after the server side's error, want %d", f.name, pmtu, mtus[f.name])
		}
	}
	if n := b.status().counter("icmp_local"); n != 2 {
		t.Errorf("icmp_local = %d, want the 2 errors", n)
	}
}

// quotedSegment is what an ICMP error quotes: the IP header (IPv4) or the
// addresses (IPv6), and the TCP header's first 8 bytes, the sequence number
// the server leg sends next.
type quotedSegment struct {
	ipHeader []byte
	src      net.IP
	tcp      [8]byte
}

// captureTCP reads the TCP segments that reach ns (a raw socket) and sends
// the first one to port that carries data, with its sequence number moved
// past the data (the sender's next one, which the kernel's error handler
// accepts once that data is acknowledged).
func captureTCP(t *testing.T, ns *testbed.NS, f family, port int) <-chan quotedSegment {
	t.Helper()
	fam := unix.AF_INET
	if f.name == "ipv6" {
		fam = unix.AF_INET6
	}
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	out := make(chan quotedSegment, 1)
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return
			}
			if q, ok := dataSegment(buf[:n], from, port); ok {
				out <- q
				return
			}
		}
	}()
	return out
}

// dataSegment parses a raw socket's packet: IPv4 comes with its header,
// IPv6 without (the source is in from).
func dataSegment(b []byte, from unix.Sockaddr, port int) (quotedSegment, bool) {
	var q quotedSegment
	tcp, payload := b, 0
	if s, ok := from.(*unix.SockaddrInet4); ok {
		hl := int(b[0]&0xf) * 4
		q.ipHeader, q.src, tcp = append([]byte(nil), b[:hl]...), net.IP(s.Addr[:]), b[hl:]
		payload = int(binary.BigEndian.Uint16(b[2:])) - hl
	} else {
		q.src = net.IP(from.(*unix.SockaddrInet6).Addr[:])
		payload = len(b)
	}
	if len(tcp) < 20 || int(binary.BigEndian.Uint16(tcp[2:])) != port {
		return q, false
	}
	payload -= int(tcp[12]>>4) * 4
	if payload <= 0 {
		return q, false
	}
	copy(q.tcp[:], tcp[:8])
	binary.BigEndian.PutUint32(q.tcp[4:], binary.BigEndian.Uint32(tcp[4:])+uint32(payload))
	return q, true
}

// sendTooBig sends, from ns (the server side), the error a router with a
// smaller link would send about q: to q's source, the client's address.
func sendTooBig(t *testing.T, ns *testbed.NS, f family, q quotedSegment, mtu int) {
	t.Helper()
	fam, proto := unix.AF_INET, unix.IPPROTO_ICMP
	msg := []byte{3, 4, 0, 0, 0, 0, byte(mtu >> 8), byte(mtu)} // fragmentation needed
	var to unix.Sockaddr
	if f.name == "ipv4" {
		to = &unix.SockaddrInet4{Addr: [4]byte(q.src.To4())}
	} else {
		fam, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
		msg = []byte{2, 0, 0, 0, 0, 0, byte(mtu >> 8), byte(mtu)} // packet too big; the kernel sums it
		ip6 := make([]byte, 40)
		ip6[0], ip6[5], ip6[6], ip6[7] = 6<<4, 26, unix.IPPROTO_TCP, 64
		copy(ip6[8:], q.src.To16())
		copy(ip6[24:], net.ParseIP(f.server).To16())
		q.ipHeader = ip6
		to = &unix.SockaddrInet6{Addr: [16]byte(q.src.To16())}
	}
	msg = append(append(msg, q.ipHeader...), q.tcp[:]...)
	if f.name == "ipv4" {
		binary.BigEndian.PutUint16(msg[2:], outage.Checksum(msg))
	}
	err := ns.Do(func() error {
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, msg, 0, to)
	})
	if err != nil {
		t.Fatalf("%s: send the ICMP error: %v", f.name, err)
	}
}

var pmtuRe = regexp.MustCompile(`\bpmtu:(\d+)`)

// serverLegPMTU is the path MTU TCP_INFO gives for the router's socket to
// the server's port (the server leg; the client leg's remote port is the
// client's), as ss prints it; 0 when there is none.
func serverLegPMTU(t *testing.T, b *bed, f family, port int) int {
	t.Helper()
	flag := "-4"
	if f.name == "ipv6" {
		flag = "-6"
	}
	r := runCmdIn(b.Router, "ss", "-tinH", flag, "state", "established", "dport", "=", fmt.Sprintf(":%d", port))
	if r.code != 0 {
		t.Fatalf("ss: %d %s", r.code, r.stderr)
	}
	m := pmtuRe.FindAllStringSubmatch(r.stdout, -1)
	if len(m) != 1 {
		t.Fatalf("%s: want one server leg to port %d, ss says:\n%s", f.name, port, r.stdout)
	}
	n, _ := strconv.Atoi(m[0][1])
	return n
}
