// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/outage"
)

// kicker is the outage study's prototype of "retransmit as soon as the link
// is back" for kernels without TCP_RTO_MAX_MS (and below its 1 s floor). It
// runs in the gateway's namespace: it pings the terminal every 100 ms over
// the link, watches the link interface, and when something arrives from the
// terminal after a second of silence it sends the gateway's own stack, for
// each connection that sent data during the silence, ICMP host-unreachable
// errors quoting the connection's oldest unacknowledged byte. Linux then
// reverts the RTO back-off one step per error (RFC 6069, TCP-LD:
// tcp_ld_RTO_revert) and retransmits at once when the reverted RTO has
// already run out. Its RTO retransmissions during the outage tell it that
// byte: an RTO resends the head of the queue.
type kicker struct {
	local, peer [4]byte
	raw         int // ICMP raw socket: pings out, errors to ourselves
	pkt         int // AF_PACKET on the link interface

	mu       sync.Mutex
	heads    map[[4]uint32]uint32 // flow (sport, dport, 0, 0) -> seq of its last data segment
	sentAt   map[[4]uint32]time.Time
	lastIn   time.Time
	kicks    int // flows kicked
	errsSent int
}

const (
	kickSilence = time.Second
	kickPerFlow = 16 // a back-off of 16 doublings is more than TCP_RTO_MAX allows
)

func startKicker(ctx context.Context, ns *testbed.NS, iface, local, peer string) (*kicker, error) {
	k := &kicker{heads: map[[4]uint32]uint32{}, sentAt: map[[4]uint32]time.Time{}, lastIn: time.Now()}
	k.local, k.peer = netip.MustParseAddr(local).As4(), netip.MustParseAddr(peer).As4()
	err := ns.Do(func() (err error) {
		if k.raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP); err != nil {
			return fmt.Errorf("icmp socket: %w", err)
		}
		_ = unix.SetsockoptInt(k.raw, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) // never read
		// ETH_P_ALL: a socket bound to one protocol never sees outgoing frames.
		if k.pkt, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons16(unix.ETH_P_ALL))); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		return bindIface(k.pkt, iface)
	})
	if err != nil {
		k.close()
		return nil, err
	}
	go k.ping(ctx)
	go k.sniff()
	context.AfterFunc(ctx, k.close)
	return k, nil
}

func htons16(v uint16) uint16 { return v<<8 | v>>8 }

func bindIface(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return fmt.Errorf("ifindex %s: %w", name, err)
	}
	return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons16(unix.ETH_P_ALL), Ifindex: int(ifr.Uint32())})
}

func (k *kicker) close() {
	unix.Close(k.raw)
	unix.Close(k.pkt) // ends sniff
}

// ping sends an echo request to the peer every 100 ms until ctx ends.
func (k *kicker) ping(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	msg := []byte{8, 0, 0, 0, 0x70, 0x65, 0, 0}
	for seq := uint16(0); ; seq++ {
		binary.BigEndian.PutUint16(msg[6:], seq)
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], outage.Checksum(msg))
		_ = unix.Sendto(k.raw, msg, 0, &unix.SockaddrInet4{Addr: k.peer})
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sniff reads the link interface: outgoing TCP data segments record each
// flow's last sequence number, anything from the peer marks the link alive.
func (k *kicker) sniff() {
	buf := make([]byte, 128)
	for {
		n, from, err := unix.Recvfrom(k.pkt, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Protocol != htons16(unix.ETH_P_IP) || n < 20 || buf[0]>>4 != 4 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(buf[2:]))
		now := time.Now()
		if ll.Pkttype != unix.PACKET_OUTGOING {
			if [4]byte(buf[12:16]) == k.peer {
				k.arrived(now)
			}
			continue
		}
		if buf[9] != unix.IPPROTO_TCP || n < ihl+20 {
			continue
		}
		tcp := buf[ihl:]
		if total-ihl-int(tcp[12]>>4)*4 <= 0 {
			continue // no payload: not a retransmission
		}
		f := [4]uint32{uint32(binary.BigEndian.Uint16(tcp)), uint32(binary.BigEndian.Uint16(tcp[2:]))}
		k.mu.Lock()
		k.heads[f], k.sentAt[f] = binary.BigEndian.Uint32(tcp[4:]), now
		k.mu.Unlock()
	}
}

// arrived notes a packet from the peer; after a silence it kicks every flow
// that sent during it.
func (k *kicker) arrived(now time.Time) {
	k.mu.Lock()
	silent := now.Sub(k.lastIn) > kickSilence
	since := k.lastIn
	k.lastIn = now
	var flows [][4]uint32
	var seqs []uint32
	if silent {
		for f, at := range k.sentAt {
			if at.After(since) {
				flows = append(flows, f)
				seqs = append(seqs, k.heads[f])
			}
		}
		k.kicks += len(flows)
	}
	k.mu.Unlock()
	for i, f := range flows {
		for range kickPerFlow {
			if k.unreachable(uint16(f[0]), uint16(f[1]), seqs[i]) == nil {
				k.mu.Lock()
				k.errsSent++
				k.mu.Unlock()
			}
		}
	}
}

// unreachable sends ourselves an ICMP host unreachable about the segment
// local:sport -> peer:dport starting at seq.
func (k *kicker) unreachable(sport, dport uint16, seq uint32) error {
	m := make([]byte, 8+20+8)
	m[0], m[1] = 3, 1 // destination unreachable, host unreachable
	q := m[8:]
	q[0], q[8], q[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(q[2:], 1500)
	copy(q[12:16], k.local[:])
	copy(q[16:20], k.peer[:])
	binary.BigEndian.PutUint16(q[10:], outage.Checksum(q[:20]))
	binary.BigEndian.PutUint16(q[20:], sport)
	binary.BigEndian.PutUint16(q[22:], dport)
	binary.BigEndian.PutUint32(q[24:], seq)
	binary.BigEndian.PutUint16(m[2:], outage.Checksum(m))
	return unix.Sendto(k.raw, m, 0, &unix.SockaddrInet4{Addr: k.local})
}

func (k *kicker) counts() (flows, errs int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.kicks, k.errsSent
}
