// SPDX-License-Identifier: Apache-2.0

package outage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pepsal/pepsal/loader"
)

// ICMPv4 types and codes the watcher sends and reads.
const (
	icmpEchoReply    = 0
	icmpUnreachable  = 3
	icmpHostUnreach  = 1
	icmpEchoRequest  = 8
	ipProtoTCP       = 6
	unreachableBytes = 8 + 20 + 8 // ICMP header, the quoted IPv4 header and 8 bytes of TCP
)

// echoRequest is an ICMP echo request of id and seq.
func echoRequest(id, seq uint16) []byte {
	m := make([]byte, 16)
	m[0] = icmpEchoRequest
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], "pepsal")
	binary.BigEndian.PutUint16(m[2:], Checksum(m))
	return m
}

// parseEchoReply reads an ICMP message (no IP header): the seq of an echo
// reply of id, or false.
func parseEchoReply(m []byte, id uint16) (seq uint16, ok bool) {
	if len(m) < 8 || m[0] != icmpEchoReply || m[1] != 0 || binary.BigEndian.Uint16(m[4:]) != id {
		return 0, false
	}
	return binary.BigEndian.Uint16(m[6:]), true
}

// unreachable is the ICMP host unreachable a router on the path would
// send about the segment of st starting at its oldest unacknowledged byte:
// what tcp_v4_err looks up the socket by and checks against snd_una.
func unreachable(st loader.Stall) ([]byte, error) {
	l, r := st.Local.Addr().Unmap(), st.Remote.Addr().Unmap()
	if !l.Is4() || !r.Is4() {
		return nil, errors.New("not IPv4")
	}
	m := make([]byte, unreachableBytes)
	m[0], m[1] = icmpUnreachable, icmpHostUnreach
	q := m[8:]
	q[0], q[8], q[9] = 0x45, 64, ipProtoTCP
	binary.BigEndian.PutUint16(q[2:], 1500)
	l4, r4 := l.As4(), r.As4()
	copy(q[12:16], l4[:])
	copy(q[16:20], r4[:])
	binary.BigEndian.PutUint16(q[10:], Checksum(q[:20]))
	binary.BigEndian.PutUint16(q[20:], st.Local.Port())
	binary.BigEndian.PutUint16(q[22:], st.Remote.Port())
	binary.BigEndian.PutUint32(q[24:], st.SndUna)
	binary.BigEndian.PutUint16(m[2:], Checksum(m))
	return m, nil
}

// Checksum is the Internet checksum (RFC 1071) of b: ICMP, IPv4 headers.
func Checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// Answer is an echo reply: from whom, to which probe, when it arrived.
type Answer struct {
	From netip.Addr
	Seq  uint16
	At   time.Time
}

// ICMP is the watcher's Link over one raw ICMPv4 socket of this network
// namespace (root: CAP_NET_RAW).
type ICMP struct {
	conn    *net.IPConn
	id      uint16
	answers chan Answer
}

// ListenICMP opens the raw socket; id tells this watcher's probes apart
// (any other pinger's replies are ignored).
func ListenICMP(id uint16) (*ICMP, error) {
	c, err := net.ListenIP("ip4:icmp", nil)
	if err != nil {
		return nil, fmt.Errorf("open a raw ICMP socket: %w", err)
	}
	l := &ICMP{conn: c, id: id, answers: make(chan Answer, 256)}
	go l.read()
	return l, nil
}

func (l *ICMP) read() {
	defer close(l.answers)
	buf := make([]byte, 1500)
	for {
		n, from, err := l.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // an error that repeats must not spin
			continue
		}
		seq, ok := parseEchoReply(buf[:n], l.id)
		ip, isIP := from.(*net.IPAddr)
		if !ok || !isIP {
			continue
		}
		addr, _ := netip.AddrFromSlice(ip.IP)
		select {
		case l.answers <- Answer{From: addr.Unmap(), Seq: seq, At: time.Now()}:
		default: // the watcher is behind: a later answer says the same
		}
	}
}

// Probe sends remote an echo request.
func (l *ICMP) Probe(remote netip.Addr, seq uint16) error {
	_, err := l.conn.WriteTo(echoRequest(l.id, seq), &net.IPAddr{IP: remote.AsSlice()})
	return err
}

// Answers are the echo replies to this watcher's probes; closed by Close.
func (l *ICMP) Answers() <-chan Answer { return l.answers }

// Kick sends this host n host unreachables about st (one undoes one
// back-off step; the kernel retransmits once the undone timeout has run
// out).
func (l *ICMP) Kick(st loader.Stall, n int) error {
	m, err := unreachable(st)
	if err != nil {
		return err
	}
	to := &net.IPAddr{IP: st.Local.Addr().Unmap().AsSlice()}
	for range n {
		if _, err := l.conn.WriteTo(m, to); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the socket.
func (l *ICMP) Close() error { return l.conn.Close() }
