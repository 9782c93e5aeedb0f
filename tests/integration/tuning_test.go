// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/tests/testbed"
	pepsaldaemon "github.com/pepsal/pepsal/userspace/daemon"
	"github.com/pepsal/pepsal/userspace/report"
	"golang.org/x/sys/unix"
)

func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, _ := c.SyscallConn()
	var info *unix.TCPInfo
	var err error
	rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// testLegTuning: every per-leg setting is seen on the real sockets, by the
// daemon (getsockopt, TCP_INFO) and by the ends (MSS and window they were offered).
func testLegTuning(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	accepted := make(chan *net.TCPConn, 1)
	ln := listen(t, b.Server, hostPort(testbed.ServerV4, 8300))
	go func() {
		c, err := ln.AcceptTCP()
		if err == nil {
			c.Write([]byte("hello\n")) // one segment, so the client learns the proxy's window
			accepted <- c
		}
	}()
	b.startPepsal("--iface", testbed.RouterClientIf,
		"--client-cc", "reno", "--server-cc", "bbr",
		"--client-initcwnd", "40", "--server-initcwnd", "50",
		"--client-initrwnd", "1000", "--client-rcvbuf", "8MiB",
		"--client-sndbuf", "3MiB", "--server-rcvbuf", "5MiB",
		"--client-mss", "1000", "--server-mss", "1200",
		"--client-nodelay=false", "--server-quickack")
	c := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8300))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := readLine(c); err != nil || line != "hello" {
		t.Fatalf("greeting: %q %v", line, err)
	}
	var s *net.TCPConn
	select {
	case s = <-accepted:
		t.Cleanup(func() { s.Close() })
	case <-time.After(5 * time.Second):
		t.Fatal("server never accepted")
	}

	conns := b.conns()
	if len(conns) != 1 || conns[0].ClientLeg == nil || conns[0].ServerLeg == nil {
		t.Fatalf("conns: %+v", conns)
	}
	cl, sl := conns[0].ClientLeg, conns[0].ServerLeg
	// The kernel doubles SO_*BUF values for its bookkeeping.
	if cl.CC != "reno" || cl.CwndSegs != 40 || cl.SndBuf != 2*3<<20 || cl.RcvBuf != 2*8<<20 || cl.NoDelay {
		t.Errorf("client leg %+v, want reno, cwnd 40, sndbuf 6 MiB, rcvbuf 16 MiB, nodelay off", *cl)
	}
	if sl.CC != "bbr" || sl.RcvBuf != 2*5<<20 || !sl.NoDelay {
		t.Errorf("server leg %+v, want bbr, rcvbuf 10 MiB, nodelay on", *sl)
	}
	// The server leg sent no data yet: its window is still the initial one.
	if sl.CwndSegs != 50 {
		t.Errorf("server leg cwnd %d, want the initial 50", sl.CwndSegs)
	}
	// What the ends were offered: the MSS clamps, and a large initial window.
	ci, si := tcpInfo(t, c), tcpInfo(t, s)
	if ci.Snd_mss > 1000 || si.Snd_mss > 1200 || si.Snd_mss <= 1000 {
		t.Errorf("MSS seen by client %d (clamp 1000), by server %d (clamp 1200)", ci.Snd_mss, si.Snd_mss)
	}
	// Where the kernel opens windows at 64 KiB at most (the product's probe
	// says so, and so must the daemon), the window starts there.
	want, why := uint32(500<<10), "the 1000-segment initial window"
	var small *loader.Unsupported
	if err := pepsaldaemon.ProbeLargeInitialWindow(); errors.As(err, &small) {
		want, why = 60<<10, "64 KiB (the most this kernel opens)"
		if off := b.daemonInfo().Off; !slices.ContainsFunc(off, func(o report.Off) bool { return o.Feature == small.Feature }) {
			t.Errorf("the daemon does not say %q: off %v", small, off)
		}
	}
	if ci.Snd_wnd < want {
		t.Errorf("client was offered a %d byte window, want %s", ci.Snd_wnd, why)
	}
	if got := b.status().counter("tune_init_cwnd"); got != 2 {
		t.Errorf("tune_init_cwnd = %d, want 2 (one per leg)", got)
	}
}

// testDefaultsUntouched: without tuning flags, sockets keep Linux's defaults
// (the comparison that makes testLegTuning mean something).
func testDefaultsUntouched(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
	b.startPepsal()
	c := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	readLine(c)
	conns := b.conns()
	if len(conns) != 1 || conns[0].ClientLeg == nil {
		t.Fatalf("conns: %+v", conns)
	}
	cc, err := b.Router.ReadSysctl("net.ipv4.tcp_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	if cl := conns[0].ClientLeg; cl.CC != cc || cl.CwndSegs > 20 {
		t.Errorf("client leg without tuning: %+v, want the namespace default %s and a default-sized cwnd (10, +1 per ACKed segment)", *cl, cc)
	}
	if ci := tcpInfo(t, c); ci.Snd_wnd > 128<<10 || ci.Snd_mss < 1400 {
		t.Errorf("client offered window %d, mss %d: expected Linux defaults", ci.Snd_wnd, ci.Snd_mss)
	}
}

// testToSCopied: the ToS / traffic class of the client's SYN is on the upstream SYN.
func testToSCopied(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8400))
	}
	b.startPepsal()
	for _, f := range families {
		const tos = 0x28 // DSCP AF11
		syns := captureSYN(t, b.Server, 8400)
		err := b.Client.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second, Control: func(network, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) {
					if network == "tcp6" {
						serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos)
					} else {
						serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos)
					}
				})
				return serr
			}}
			c, err := d.Dial("tcp", hostPort(f.server, 8400))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = readLine(c)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		select {
		case got := <-syns:
			if got != tos {
				t.Errorf("%s: upstream SYN has ToS %#x, want %#x", f.name, got, tos)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: no upstream SYN captured", f.name)
		}
	}
}

// captureSYN reports the ToS / traffic class of the next SYN to port seen on
// the server's eth0.
func captureSYN(t *testing.T, ns *testbed.NS, port uint16) <-chan int {
	t.Helper()
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	out := make(chan int, 1)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	go func() {
		defer unix.Close(fd)
		buf := make([]byte, 2048)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return
			}
			if tos, ok := synToS(buf[:n], port); ok {
				out <- tos
				return
			}
		}
	}()
	return out
}

// synToS parses an Ethernet frame; for a SYN (not SYN-ACK) to port it
// returns the IPv4 ToS or IPv6 traffic class.
func synToS(f []byte, port uint16) (int, bool) {
	if len(f) < 14 {
		return 0, false
	}
	var tos int
	var tcp []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case unix.ETH_P_IP:
		ip := f[14:]
		if len(ip) < 20 || ip[9] != unix.IPPROTO_TCP {
			return 0, false
		}
		tos, tcp = int(ip[1]), ip[int(ip[0]&0xf)*4:]
	case unix.ETH_P_IPV6:
		ip := f[14:]
		if len(ip) < 40 || ip[6] != unix.IPPROTO_TCP {
			return 0, false
		}
		tos, tcp = int(binary.BigEndian.Uint32(ip)>>20)&0xff, ip[40:]
	default:
		return 0, false
	}
	if len(tcp) < 14 || binary.BigEndian.Uint16(tcp[2:]) != port {
		return 0, false
	}
	flags := tcp[13]
	return tos, flags&0x02 != 0 && flags&0x10 == 0
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
