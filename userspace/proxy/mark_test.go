// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestServerLegMark: a client flow's server leg carries the Dialer's mark,
// by an ordinary dial and by fast open, so that the operator's output-hook
// rules can match it (--forward-filter=mirrored); pepsal's own connections
// (DialOwn: the warm pool's) carry none. SO_MARK needs CAP_NET_ADMIN.
func TestServerLegMark(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SO_MARK needs CAP_NET_ADMIN: run as root")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Held open until the end: a connection closed with the fast-open
	// byte unread is reset, and the dial could see the reset.
	held := make(chan net.Conn, 16)
	defer func() {
		ln.Close()
		for len(held) > 0 {
			(<-held).Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	d := &Dialer{Timeout: 5 * time.Second, Mark: 0x5e9a2}
	mark := func(c *net.TCPConn, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var m int
		var serr error
		if err := rc.Control(func(fd uintptr) { m, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil || serr != nil {
			t.Fatalf("SO_MARK: %v %v", err, serr)
		}
		return m
	}
	ctx := context.Background()
	c, _, err := d.dial(ctx, netip.AddrPort{}, dst, 0)
	if m := mark(c, err); m != 0x5e9a2 {
		t.Errorf("dial: mark %#x, want 0x5e9a2", m)
	}
	c, _, err = d.dialFastOpen(ctx, netip.AddrPort{}, dst, 0, []byte("x"))
	if m := mark(c, err); m != 0x5e9a2 {
		t.Errorf("fast open: mark %#x, want 0x5e9a2", m)
	}
	if m := mark(d.DialOwn(ctx, dst.String())); m != 0 {
		t.Errorf("DialOwn: mark %#x, want none", m)
	}
	c, _, err = (&Dialer{Timeout: 5 * time.Second}).dial(ctx, netip.AddrPort{}, dst, 0)
	if m := mark(c, err); m != 0 {
		t.Errorf("no mark asked: mark %#x", m)
	}
}
