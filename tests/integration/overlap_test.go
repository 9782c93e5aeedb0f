// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"golang.org/x/sys/unix"
)

// TestKernelRelayCutsOverlap: a client retransmits a segment that overlaps
// bytes the proxy already received (seq < rcv_nxt < end_seq, as a sender
// does that resends a larger segment after a loss). TCP queues that skb
// whole and the kernel hands the verdict whole skbs: relayed as is, its
// head would reach the server twice. The server must get every byte once,
// in order, and the verdict must say it cut an overlap.
//
// No kernel TCP sends such a segment on demand, so the client is a raw
// socket, with an address its namespace does not own: its kernel drops the
// proxy's replies instead of resetting a connection it has no socket for,
// and the router reaches that address through a static neighbour entry.
func TestKernelRelayCutsOverlap(t *testing.T) {
	requireKernelRelay(t)
	b := newBed(t, defaultSuite().inRelay("sockmap")) // --offload-after 0: in the kernel relay at once
	const port = 7900
	received := make(chan []byte, 1)
	serve(t, b.Server, hostPort(testbed.ServerV4, port), func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(15 * time.Second))
		got, _ := io.ReadAll(c)
		received <- got
	})
	b.startPepsal()

	const rawClient = "10.77.1.50"
	if err := b.staticNeighbor(b.Client, testbed.RouterClientIf, rawClient); err != nil {
		t.Fatal(err)
	}
	c := newRawTCP(t, b.Client, "eth0", rawClient, testbed.ServerV4, port)
	c.handshake()
	b.waitKernelRelay(rawClient)

	pattern := make([]byte, 1800)
	for i := range pattern {
		pattern[i] = byte(i % 251)
	}
	c.send(tcpACK|tcpPSH, 0, pattern[:1000])
	c.waitAck(1000)
	// 500 bytes already acknowledged, then 800 new ones.
	c.send(tcpACK|tcpPSH, 500, pattern[500:])
	c.waitAck(len(pattern))
	c.send(tcpACK|tcpFIN, len(pattern), nil)

	select {
	case got := <-received:
		if !bytes.Equal(got, pattern) {
			t.Errorf("server got %d bytes, want the %d sent once in order (%s)", len(got), len(pattern), describeOverlap(got, pattern))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the server saw no end of the stream")
	}
	if n := b.daemonStatus().counter("relay_overlap_trimmed"); n == 0 {
		t.Errorf("relay_overlap_trimmed = 0: the overlapping segment did not go through the verdict's cut")
	}
}

// describeOverlap says how got differs from want: the tell-tale of a relayed
// overlap is want[:1000] followed by want[500:].
func describeOverlap(got, want []byte) string {
	dup := append(append([]byte{}, want[:1000]...), want[500:]...)
	if bytes.Equal(got, dup) {
		return "bytes [500,1000) twice: the overlapping head was relayed"
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d", i)
		}
	}
	return "one is a prefix of the other"
}

// waitKernelRelay waits until the daemon relays client's connection in the
// kernel, so that the bytes sent next go through the verdict.
func (b *bed) waitKernelRelay(client string) {
	b.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conns := b.conns()
		for _, c := range conns {
			if host, _, _ := net.SplitHostPort(c.Client); host == client && c.Relay == "kernel" {
				return
			}
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("connection from %s not in the kernel relay: %+v", client, conns)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// rawTCP is an IPv4-only TCP client that writes its segments by hand: it
// sends through an IPPROTO_RAW socket and reads the replies with an
// AF_PACKET socket, both opened in the client namespace.
type rawTCP struct {
	t            *testing.T
	src, dst     [4]byte
	sport, dport uint16
	isn          uint32 // our initial sequence number; offsets count from isn+1
	rcvNxt       uint32 // the peer's next sequence number, acknowledged in every segment
	sndNxt       uint32 // ours, after the last segment sent
	out, in      int
}

func newRawTCP(t *testing.T, ns *testbed.NS, ifname, src, dst string, dport int) *rawTCP {
	t.Helper()
	c := &rawTCP{t: t, sport: uint16(40000 + rand.IntN(20000)), dport: uint16(dport), isn: rand.Uint32(), out: -1, in: -1}
	c.sndNxt = c.isn
	copy(c.src[:], net.ParseIP(src).To4())
	copy(c.dst[:], net.ParseIP(dst).To4())
	t.Cleanup(c.close)
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		if c.out, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		proto := htons(unix.ETH_P_IP)
		if c.in, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(proto)); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(c.in, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(c.in, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		t.Fatalf("raw TCP client in %s: %v", ns.Name, err)
	}
	return c
}

// close resets the connection, so that the proxy does not keep it, and
// closes the sockets.
func (c *rawTCP) close() {
	if c.out >= 0 && c.rcvNxt != 0 {
		_ = c.sendSeq(tcpRST|tcpACK, c.sndNxt, nil, nil) // best effort: the namespaces go next
	}
	for _, fd := range []int{c.out, c.in} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// handshake sends the SYN (MSS 1460, no other option) and ACKs the SYN-ACK.
func (c *rawTCP) handshake() {
	c.t.Helper()
	if err := c.sendSeq(tcpSYN, c.isn, []byte{2, 4, 0x05, 0xb4}, nil); err != nil {
		c.t.Fatal(err)
	}
	seg := c.recv(func(s segment) bool { return s.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK && s.ack == c.isn+1 }, "SYN-ACK")
	c.rcvNxt = seg.seq + 1
	c.send(tcpACK, 0, nil)
}

// send sends payload at stream offset off (0 is the first byte after the SYN).
func (c *rawTCP) send(flags byte, off int, payload []byte) {
	c.t.Helper()
	if err := c.sendSeq(flags, c.isn+1+uint32(off), nil, payload); err != nil {
		c.t.Fatal(err)
	}
}

// waitAck waits until the peer acknowledges every byte before offset off.
func (c *rawTCP) waitAck(off int) {
	c.t.Helper()
	want := c.isn + 1 + uint32(off)
	c.recv(func(s segment) bool { return s.flags&tcpACK != 0 && int32(s.ack-want) >= 0 }, fmt.Sprintf("ACK of offset %d", off))
}

func (c *rawTCP) sendSeq(flags byte, seq uint32, opts, payload []byte) error {
	tcpLen := 20 + len(opts) + len(payload)
	pkt := make([]byte, 20+tcpLen)
	ip, tcp := pkt[:20], pkt[20:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint16(ip[4:], uint16(rand.Uint32()))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, unix.IPPROTO_TCP
	copy(ip[12:], c.src[:])
	copy(ip[16:], c.dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(0, ip))

	binary.BigEndian.PutUint16(tcp[0:], c.sport)
	binary.BigEndian.PutUint16(tcp[2:], c.dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	if flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], c.rcvNxt)
	}
	tcp[12] = byte((20+len(opts))/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], payload)
	binary.BigEndian.PutUint16(tcp[16:], checksum(pseudoSum(ip, tcpLen), tcp))

	if err := unix.Sendto(c.out, pkt, 0, &unix.SockaddrInet4{Addr: c.dst}); err != nil {
		return fmt.Errorf("send segment (flags %#x): %w", flags, err)
	}
	end := seq + uint32(len(payload))
	if flags&(tcpSYN|tcpFIN) != 0 {
		end++
	}
	if int32(end-c.sndNxt) > 0 {
		c.sndNxt = end
	}
	return nil
}

// segment is what recv reads of a TCP header.
type segment struct {
	seq, ack uint32
	flags    byte
}

// recv reads until a segment of this connection from the peer matches, for
// 5 s at most.
func (c *rawTCP) recv(match func(segment) bool, what string) segment {
	c.t.Helper()
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(c.in, buf, 0)
		if err != nil {
			continue // timeout (EAGAIN) or EINTR: look at the deadline again
		}
		ip := buf[:n]
		if n < 20 || ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_TCP || !bytes.Equal(ip[12:16], c.dst[:]) || !bytes.Equal(ip[16:20], c.src[:]) {
			continue
		}
		tcp := ip[int(ip[0]&0xf)*4:]
		if len(tcp) < 20 || binary.BigEndian.Uint16(tcp[0:]) != c.dport || binary.BigEndian.Uint16(tcp[2:]) != c.sport {
			continue
		}
		s := segment{seq: binary.BigEndian.Uint32(tcp[4:]), ack: binary.BigEndian.Uint32(tcp[8:]), flags: tcp[13]}
		if s.flags&tcpRST != 0 {
			c.t.Fatalf("waiting for %s: the peer reset the connection", what)
		}
		if match(s) {
			return s
		}
	}
	c.t.Fatalf("no %s within 5 s", what)
	return segment{}
}

// pseudoSum is the sum of the TCP pseudo-header of IPv4 header ip.
func pseudoSum(ip []byte, tcpLen int) uint32 {
	var ph [12]byte
	copy(ph[0:], ip[12:20])
	ph[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ph[10:], uint16(tcpLen))
	return sum16(0, ph[:])
}

// checksum is the Internet checksum of b, starting from partial sum acc.
func checksum(acc uint32, b []byte) uint16 {
	acc = sum16(acc, b)
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

func sum16(acc uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	return acc
}
