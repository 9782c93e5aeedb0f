// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// firstBytes waits up to wait for what the client sends first, so that it can
// ride on the upstream SYN; protocols where the server speaks first get
// nothing here. It then reads on, without waiting, until a read comes back
// short: the kernel relay must never see a partly read skb (its verdict would
// get the whole skb again), and a short read means every queued skb was
// consumed whole. drained is false when it stopped at maxFirst instead.
func firstBytes(c *net.TCPConn, wait time.Duration) (data []byte, drained bool, err error) {
	const synData, maxFirst = 1400, 1 << 20 // what fits in a SYN on a 1500-byte path; a bound
	buf := make([]byte, synData)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(buf)
	if sockopt.IsTimeout(err) {
		return nil, true, nil
	}
	if err != nil {
		return nil, true, err
	}
	if n < synData {
		return buf[:n], true, nil // a short read: nothing more was queued
	}
	return ReadQueued(c, buf[:n], maxFirst)
}

// ReadQueued appends to data what is queued on c, without waiting, until a
// read comes back short (every queued skb read whole) or data holds max
// bytes (drained false): what firstBytes and the warm-path gateway's header
// read end with. c's read deadline is cleared first: their wait may run out
// between their last read and this one (seen on a slow machine), and a read
// past its deadline fails without trying: the flow would be reset for
// nothing.
func ReadQueued(c *net.TCPConn, data []byte, max int) (_ []byte, drained bool, err error) {
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return data, true, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return data, true, err
	}
	more := make([]byte, 64<<10)
	for {
		if len(data) >= max {
			return data, false, nil
		}
		// One non-blocking read of what is queued.
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			m, rerr = unix.Read(int(fd), more)
			return true
		}); err != nil {
			return data, true, err
		}
		if errors.Is(rerr, unix.EAGAIN) || m == 0 {
			return data, true, nil // nothing queued (or EOF): every skb was read whole
		}
		if rerr != nil {
			return data, true, rerr
		}
		data = append(data, more[:m]...)
		if m < len(more) {
			return data, true, nil
		}
	}
}

// dialFastOpen connects to dst with data in the SYN (sendto MSG_FASTOPEN),
// with the same socket setup as an ordinary dial, and writes what did not fit
// in the SYN once connected.
func (d *Dialer) dialFastOpen(ctx context.Context, src, dst netip.AddrPort, tos uint32, data []byte) (conn *net.TCPConn, cookie uint64, err error) {
	var family int
	var network string
	var sa unix.Sockaddr
	if dst.Addr().Is4() {
		family, network = unix.AF_INET, "tcp4"
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	} else {
		family, network = unix.AF_INET6, "tcp6"
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	// Timed like an ordinary dial: socket setup, SYN (with data), handshake.
	start := time.Now()
	defer func() { d.observeConnect(start, err) }()
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("socket: %w", err)
	}
	from := d.source(src)
	if cookie, err = d.setupUpstream(fd, network, from, tos, d.Mark); err == nil {
		err = sockopt.Wrap("TCP_FASTOPEN_NO_COOKIE", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1))
	}
	if err == nil && from.IsValid() {
		var local unix.Sockaddr = &unix.SockaddrInet6{Port: int(from.Port()), Addr: from.Addr().As16()}
		if family == unix.AF_INET {
			local = &unix.SockaddrInet4{Port: int(from.Port()), Addr: from.Addr().As4()}
		}
		if err = unix.Bind(fd, local); err != nil {
			err = fmt.Errorf("bind to the client's %s: %w", from, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, cookie, err
	}
	syn := data[:min(len(data), 1400)]
	sent, err := unix.SendmsgN(fd, syn, nil, sa, unix.MSG_FASTOPEN|unix.MSG_NOSIGNAL)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, cookie, fmt.Errorf("dial %s with fast open: %w", dst, err)
	}
	f := os.NewFile(uintptr(fd), "upstream")
	fc, err := net.FileConn(f) // dups fd into the poller
	f.Close()
	if err != nil {
		return nil, cookie, fmt.Errorf("dial %s: %w", dst, err)
	}
	conn = fc.(*net.TCPConn)
	if err := waitConnected(ctx, conn, d.Timeout); err != nil {
		conn.Close()
		return nil, cookie, fmt.Errorf("dial %s: %w", dst, err)
	}
	if sent < len(data) {
		if _, err := conn.Write(data[sent:]); err != nil {
			conn.Close()
			return nil, cookie, fmt.Errorf("dial %s: write first bytes: %w", dst, err)
		}
	}
	return conn, cookie, nil
}

// waitConnected waits for a non-blocking connect to finish or fail.
func waitConnected(ctx context.Context, c *net.TCPConn, timeout time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetWriteDeadline(deadline)
	defer c.SetWriteDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Now()) })
	defer stop()
	var connErr error
	err = rc.Write(func(fd uintptr) bool {
		if soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			connErr = errors.Join(err, unix.Errno(soErr))
			return true
		}
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			connErr = err
			return true
		}
		return info.State != unix.BPF_TCP_SYN_SENT // else wait for writability
	})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("connect: %w", unix.ETIMEDOUT)
		}
		return err
	}
	if connErr != nil {
		return fmt.Errorf("connect: %w", connErr)
	}
	return nil
}
