// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// bigInitialWindow is past what a SYN can announce: an initial receive
// window above it is what --*-initrwnd of more than ~45 segments asks for.
const bigInitialWindow = 65535

// ProbeLargeInitialWindow tells whether the kernel opens a new connection's
// receive window past 64 KiB at once, as the initial receive windows pepsal
// sets through sock_ops ask. Older kernels (Debian 12's 6.1) open every
// window at 64 KiB at most and let it grow with the data, until upstream's
// "tcp: remove 64 KByte limit for initial tp->rcv_wnd value". Found out on
// loopback, where a default window is ten segments of 64 KiB: an accepted
// socket with a large buffer starts with rcv_ssthresh above 64 KiB only if
// the kernel allows it. An *loader.Unsupported error if not.
func ProbeLargeInitialWindow() error {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20) })
		if err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("window probe: listen on loopback: %w", err)
	}
	defer ln.Close()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp4", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("window probe: connect on loopback: %w", err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("window probe: accept on loopback: %w", err)
	}
	defer a.Close()
	var ssthresh uint32
	err = sockopt.WithFD(a.(*net.TCPConn), func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err == nil {
			ssthresh = info.Rcv_ssthresh
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("window probe: TCP_INFO: %w", err)
	}
	if ssthresh <= bigInitialWindow {
		return &loader.Unsupported{Feature: "initial receive windows above 64 KiB",
			Why: fmt.Sprintf("the kernel opens every receive window at 64 KiB at most (a new loopback connection started at %d bytes)", ssthresh)}
	}
	return nil
}

// windowOff says what the legs' initial receive windows become on a kernel
// that opens windows at 64 KiB at most (nothing when none asks for more).
func windowOff(t tuning.Tuning, probe func() error) []report.Off {
	const typicalMSS = 1400
	if max(t.Client.InitRwnd, t.Server.InitRwnd)*typicalMSS <= bigInitialWindow {
		return nil
	}
	var un *loader.Unsupported
	if err := probe(); errors.As(err, &un) {
		return []report.Off{{Feature: un.Feature, Why: un.Why, Instead: "the legs' initial receive windows open at 64 KiB and grow with the data"}}
	}
	return nil
}
