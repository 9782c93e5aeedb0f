// SPDX-License-Identifier: Apache-2.0

package loader

// Real sockets for the classifier's tests: the classifier's socket lookups
// (bpf_skc_lookup_tcp) find them in the test namespace.

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// listenTCP listens on loopback in the current namespace, without MPTCP (a
// SOCKMAP refuses MPTCP sockets).
func listenTCP(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(t.Context(), network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// registerListener puts l in pepsal_listen at slot, as the daemon does.
func registerListener(t *testing.T, m *ebpf.Map, slot uint32, l *net.TCPListener) {
	t.Helper()
	raw, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var uerr error
	if err := raw.Control(func(fd uintptr) { uerr = m.Update(slot, uint64(fd), ebpf.UpdateAny) }); err != nil {
		t.Fatal(err)
	}
	if uerr != nil {
		t.Fatalf("pepsal_listen[%d]: %v", slot, uerr)
	}
	t.Cleanup(func() { _ = m.Delete(slot) })
}

// connPair is an established loopback connection; the dialer's side is c.
type connPair struct {
	c, s *net.TCPConn
}

func dialPair(t *testing.T, network, addr string) connPair {
	t.Helper()
	l := listenTCP(t, network, addr)
	d := net.Dialer{}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(t.Context(), network, l.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addr(), err)
	}
	s, err := l.AcceptTCP()
	if err != nil {
		c.Close()
		t.Fatalf("accept: %v", err)
	}
	p := connPair{c.(*net.TCPConn), s}
	t.Cleanup(func() { p.c.Close(); p.s.Close() })
	return p
}

// timeWait leaves the dialer's side of p in TIME_WAIT: it closes first, and
// its reading EOF means the other side's FIN arrived, which is the moment the
// kernel turns the socket into a TIME_WAIT one.
func timeWait(t *testing.T, p connPair) {
	t.Helper()
	if err := p.c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(p.s); err != nil {
		t.Fatalf("server side: %v", err)
	}
	if err := p.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(p.c); err != nil {
		t.Fatalf("dialer side: %v", err)
	}
	if err := p.c.Close(); err != nil {
		t.Fatal(err)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

// synSent leaves a socket in SYN_SENT from local to remote, bound as a
// --transparent server leg binds the client's address (IP_TRANSPARENT), and
// returns its descriptor. remote must be routed to out0, where nothing
// answers.
func synSent(t *testing.T, local, remote netip.AddrPort) int {
	t.Helper()
	fam, level, opt := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	if local.Addr().Is6() {
		fam, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		t.Fatalf("transparent: %v", err)
	}
	if err := unix.Bind(fd, sockaddr(local)); err != nil {
		t.Fatalf("bind %s: %v", local, err)
	}
	if err := unix.Connect(fd, sockaddr(remote)); !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("connect %s: %v, want EINPROGRESS", remote, err)
	}
	return fd
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}
