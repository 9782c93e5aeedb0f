// SPDX-License-Identifier: Apache-2.0

package loader

// Frames cut at every length (issue #22). BPF_PROG_TEST_RUN refuses a frame
// whose IP header is incomplete (EINVAL before the program runs), so those
// go through a real interface: a veth with the classifier as its clsact
// filter, written to with a packet socket. A frame shorter than Ethernet's
// 14 bytes reaches tc on neither path (a packet socket pads it to the
// link's header length, and the kernel pulls the Ethernet header before tc).

import (
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cutFrame is a frame to cut at every length, and where its headers end.
type cutFrame struct {
	name string
	p    pkt
	ip   int // end of the IP header
	icmp int // end of the ICMP header, 0 for TCP
}

func cutFrames() []cutFrame {
	return []cutFrame{
		{"v4_syn", v4syn, 14 + 20, 0},
		{"v6_syn", v6syn, 14 + 40, 0},
		{"v4_icmp", icmpAbout(v4syn, 0, 0), 14 + 20, 14 + 20 + 8},
		{"v6_icmp", icmpAbout(v6syn, 0, 0), 14 + 40, 14 + 40 + 8},
	}
}

// lengthCases: every length from the end of the IP header on, under
// BPF_PROG_TEST_RUN, with the IP length left as it was (past the frame) and
// set to agree with the frame (then the header the frame ends in decides).
func lengthCases(t *testing.T, e *classifyEnv) {
	for _, c := range cutFrames() {
		t.Run("cut/"+c.name, func(t *testing.T) {
			e.ns.EnterForTest(t)
			full := c.p.bytes()
			for n := c.ip; n < len(full); n++ {
				e.cutCase(t, full[:n], n, "length past frame", "pkt_unparsed")
				agreed := agreeLength(full[:n], c.ip)
				want := "pkt_unparsed" // inside the TCP header, or the ICMP one
				if c.icmp != 0 && n >= c.icmp {
					want = "icmp_unparsed" // inside the quote
				}
				e.cutCase(t, agreed, n, "length agrees", want)
			}
		})
	}
}

func (e *classifyEnv) cutCase(t *testing.T, frame []byte, n int, variant, want string) {
	t.Helper()
	e.counters.reset(t)
	if mark := e.run(t, frame); mark != 0 {
		t.Errorf("%d bytes, %s: mark %#x", n, variant, mark)
	}
	e.expectAt(t, fmt.Sprintf("%d bytes, %s", n, variant), want)
}

// expectAt is counters.expect with where in the error.
func (e *classifyEnv) expectAt(t *testing.T, where, want string) {
	t.Helper()
	diffs, err := diffCounters(e.counters.read(t), one(want))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Errorf("%s: %s", where, d)
	}
	e.counters.asserted[want] = true
}

// agreeLength is frame with its IP length set to what the frame holds.
func agreeLength(frame []byte, ipEnd int) []byte {
	out := append([]byte(nil), frame...)
	if ipEnd == 14+20 {
		binary.BigEndian.PutUint16(out[14+2:], uint16(len(out)-14))
	} else {
		binary.BigEndian.PutUint16(out[14+4:], uint16(len(out)-ipEnd))
	}
	return out
}

// wireCases: every length from 14 bytes on, through a real interface.
func wireCases(t *testing.T, e *classifyEnv) {
	t.Run("wire", func(t *testing.T) {
		e.ns.EnterForTest(t)
		send := e.wire(t)
		for _, c := range cutFrames() {
			full := c.p.bytes()
			for n := 14; n < len(full); n++ {
				e.counters.reset(t)
				send(full[:n])
				e.waitCounted(t)
				e.expectAt(t, fmt.Sprintf("%s cut to %d bytes on the wire", c.name, n), "pkt_unparsed")
			}
		}
	})
}

// wire makes the veth raw0 (peer raw0p), quiet (no IPv6, no address), with
// the classifier on raw0's ingress, and returns a function that writes a
// frame to raw0p.
func (e *classifyEnv) wire(t *testing.T) func([]byte) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "raw0", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}, PeerName: "raw0p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add raw0: %v", err)
	}
	peer, err := netlink.LinkByName("raw0p")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{v, peer} {
		if err := writeSysctl("net/ipv6/conf/"+l.Attrs().Name+"/disable_ipv6", 1); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("%s up: %v", l.Attrs().Name, err)
		}
	}
	if _, err := attachClsact(e.coll.Programs["pepsal_classify"], v.Attrs().Index); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: sends only
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	to := &unix.SockaddrLinklayer{Ifindex: peer.Attrs().Index, Halen: 6}
	return func(frame []byte) {
		t.Helper()
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			t.Fatalf("send %d bytes: %v", len(frame), err)
		}
	}
}

// waitCounted waits until the classifier has counted a frame: a veth
// delivers in a softirq, usually before the send returns.
func (e *classifyEnv) waitCounted(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for _, v := range e.counters.read(t) {
			if v != 0 {
				return
			}
		}
	}
	t.Fatal("the classifier counted nothing of the frame sent")
}
