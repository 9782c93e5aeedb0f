// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// WithFD runs fn on a socket's descriptor without dup'ing it: a dup would
// keep the socket (and its entries in the BPF sockmaps) alive after the
// owner closes it.
func WithFD(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Cookie is the kernel's cookie of a socket (SO_COOKIE): the key of its
// entries in the BPF maps.
func Cookie(c syscall.Conn) (uint64, error) {
	var cookie uint64
	err := WithFD(c, func(fd int) (err error) {
		cookie, err = CookieFD(fd)
		return err
	})
	return cookie, err
}

// CookieFD is Cookie for a descriptor (a socket still being dialed).
func CookieFD(fd int) (uint64, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_COOKIE: %w", err)
	}
	return cookie, nil
}

// Readable tells whether a read on the socket would not block: bytes, EOF
// or an error are waiting. It asks poll(2), which leaves a pending error on
// the socket: a peek (recv MSG_PEEK) would consume it, and the read that
// follows would then see a clean EOF where the peer had reset, and pass a
// FIN on where a reset was due.
func Readable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	n, err := RetryEINTR(func() (int, error) { return unix.Poll(fds, 0) })
	return err != nil || (n > 0 && fds[0].Revents != 0)
}

// QueueEmpty says whether a socket has no unread byte (SIOCINQ).
func QueueEmpty(rc syscall.RawConn) bool {
	var n int
	var err error
	if cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); cerr != nil || err != nil {
		return false
	}
	return n == 0
}

// RetryEINTR calls f again for as long as a signal interrupts it.
func RetryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// IsTimeout says whether err is a deadline that ran out.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// AddrPort is a TCP address as a netip.AddrPort with a v4-mapped address
// unmapped (the zero value for any other kind of address), so that one
// destination compares equal whichever family's socket saw it.
func AddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
