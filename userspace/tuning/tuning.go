// SPDX-License-Identifier: Apache-2.0

// Package tuning is what pepsal asks of each leg of a split connection:
// the per-leg TCP settings (Leg), the role presets of the satellite leg
// (Role), TCP Fast Open on the link between two pepsals (FastOpen), their
// validation, and putting them on a socket before and after its handshake.
//
// It holds the policy, not the mechanism: the options go on through
// sockopt, which with internal/enum is all of pepsal it may import. It must
// not know connections, relays or the BPF side (sock_ops reads the initial
// windows from the daemon), and it has no package-level state but the
// read-only presets.
package tuning

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// Leg is the TCP tuning of one side of every split connection. The zero value
// keeps Linux's defaults.
type Leg struct {
	CC       string // congestion control (TCP_CONGESTION)
	InitCwnd uint32 // initial congestion window in segments (set by the sock_ops program)
	InitRwnd uint32 // initial receive window in segments (set by the sock_ops program)
	SndBuf   int    // SO_SNDBUFFORCE bytes; 0 keeps autotuning
	RcvBuf   int    // SO_RCVBUFFORCE bytes; 0 keeps autotuning
	NoDelay  *bool  // TCP_NODELAY; nil keeps Go's default (on)
	QuickAck bool   // TCP_QUICKACK at connection start
	MSS      int    // TCP_MAXSEG clamp; 0 keeps the path's
	// KeepAlive is the idle time before keepalive probes (then KeepAlive/4
	// apart, 4 of them): a peer that vanished from an idle leg is found.
	// 0: no keepalive.
	KeepAlive time.Duration
	// UserTimeout bounds how long sent data may stay unacknowledged (and
	// keepalive probes unanswered) before the leg is dropped (TCP_USER_TIMEOUT):
	// a leg whose peer vanished cannot hold its memory for ever. 0: the
	// kernel's retransmission limit (net.ipv4.tcp_retries2, ~15 min).
	UserTimeout time.Duration
	// RTOMax bounds the leg's retransmission back-off (the long leg's).
	RTOMax RTOMax
	// Long: the leg faces the link (a role's long leg; with ByRTT, only
	// where its handshake RTT is ByRTT.LongRTT or more). Between two
	// pepsals its stalls through an outage are watched (--outage-probe).
	Long bool
}

// Defaults of --keepalive and --user-timeout, for a 600 ms RTT satellite
// path: probes start after a minute of silence, and a leg is dropped after
// two minutes without an answer, which rides out an RTO backoff of about six
// retransmissions (1+2+4+...+32 s at a 1 s RTO) or a short rain fade, and
// finds a dead peer before many accumulate.
const (
	DefaultKeepAlive   = 60 * time.Second
	DefaultUserTimeout = 120 * time.Second
	// KeepAliveProbes is how many unanswered keepalive probes drop a leg.
	KeepAliveProbes = 4
)

// Tuning is what the split lets each leg do differently.
type Tuning struct {
	Client   Leg // accepted sockets, facing the client
	Server   Leg // dialed sockets, facing the server
	FastOpen FastOpen
	// ByRTT tunes both legs by their handshake round trips (the sock_ops
	// program), where a leg's own InitCwnd or CC is not set.
	ByRTT ByRTT
}

// ByRTT is a leg's tuning from its handshake RTT, which only the sock_ops
// program sees in time: the initial window is one bandwidth-delay product
// of Rate at that RTT, within MinWindow..MaxWindow segments (never below the
// kernel's own), and a leg whose RTT is at least LongRTT gets LongCC. The
// zero value is off.
type ByRTT struct {
	Rate                 uint32 // bytes per second
	MinWindow, MaxWindow uint16 // segments
	LongRTT              time.Duration
	LongCC               string
}

// Available drops LongCC when the kernel does not have it, even after
// being asked to load its module, and says so: the default role must start
// on any kernel, its long legs then keep the kernel's congestion control.
func (b *ByRTT) Available() error {
	if b.LongCC == "" {
		return nil
	}
	avail, err := availableCC(b.LongCC)
	if err == nil && strings.Contains(" "+avail+" ", " "+b.LongCC+" ") {
		return nil
	}
	cc := b.LongCC
	b.LongCC = ""
	if err != nil {
		return fmt.Errorf("long legs keep the kernel's congestion control, not %s: %w", cc, err)
	}
	return fmt.Errorf("long legs keep the kernel's congestion control: %s is not available (available: %s)", cc, avail)
}

// On says whether legs are tuned by their round trips.
func (b ByRTT) On() bool { return b.Rate > 0 }

// Window is the initial window ByRTT gives a leg of this RTT and MSS, in
// segments, as the sock_ops program computes it (for status and tests).
func (b ByRTT) Window(rtt time.Duration, mss int) int {
	if !b.On() || rtt <= 0 || mss <= 0 {
		return 0
	}
	w := int(uint64(rtt.Microseconds()) * uint64(b.Rate) / 1000 / 1000 / uint64(mss))
	return min(max(w, int(b.MinWindow)), int(b.MaxWindow))
}

// LegError is a leg setting out of range. Field names the setting ("cc",
// "buffer", "mss", "keepalive", "user-timeout", "rto-max", "initcwnd"), Msg what is
// wrong with it ("5 is out of range (88-65495)").
type LegError struct {
	Leg   string // the name given to Validate: "client" or "server"
	Field string
	Msg   string
	Err   error // the cause, if any
}

func (e *LegError) Error() string { return fmt.Sprintf("%s leg: %s %s", e.Leg, e.Field, e.Msg) }
func (e *LegError) Unwrap() error { return e.Err }

// Validate checks what can be checked before anything is opened.
func (l Leg) Validate(name string) error {
	if l.CC != "" {
		avail, err := availableCC(l.CC)
		if err != nil {
			return err
		}
		if !strings.Contains(" "+avail+" ", " "+l.CC+" ") {
			return &LegError{Leg: name, Field: "cc", Msg: fmt.Sprintf("%q is not available here (available: %s)", l.CC, avail)}
		}
	}
	if l.SndBuf < 0 || l.RcvBuf < 0 {
		return &LegError{Leg: name, Field: "buffer", Msg: "sizes must not be negative"}
	}
	if l.MSS != 0 && (l.MSS < 88 || l.MSS > 65495) {
		return &LegError{Leg: name, Field: "mss", Msg: fmt.Sprintf("%d is out of range (88-65495)", l.MSS)}
	}
	if l.KeepAlive != 0 && (l.KeepAlive < time.Second || l.KeepAlive > 8*time.Hour) {
		return &LegError{Leg: name, Field: "keepalive", Msg: fmt.Sprintf("%s: want 0 (off) or 1s to 8h", l.KeepAlive)}
	}
	if l.UserTimeout < 0 || l.UserTimeout > 24*time.Hour || l.UserTimeout > 0 && l.UserTimeout < time.Millisecond {
		return &LegError{Leg: name, Field: "user-timeout", Msg: fmt.Sprintf("%s: want 0 (kernel default) or 1ms to 24h", l.UserTimeout)}
	}
	if err := l.RTOMax.Validate(); err != nil {
		return &LegError{Leg: name, Field: "rto-max", Msg: err.Error(), Err: err}
	}
	if l.RTOMax.On() && l.UserTimeout == 0 && l.RTOMax.GiveUp == 0 {
		// Since 6.15 a bounded socket without one dies after ~14 s of outage.
		return &LegError{Leg: name, Field: "rto-max", Msg: "needs a user timeout on the leg (--user-timeout, or GiveUp)"}
	}
	if l.InitCwnd > 4096 || l.InitRwnd > 65535 {
		return &LegError{Leg: name, Field: "initcwnd", Msg: "must be <= 4096 and initrwnd <= 65535"}
	}
	return nil
}

// availableCC lists the congestion controls the kernel has, after asking it
// for want: most distributions build them as modules (Debian's tcp_bbr), which
// the kernel loads when a process with CAP_NET_ADMIN first sets one.
func availableCC(want string) (string, error) {
	read := func() (string, error) {
		data, err := sockopt.ReadSysctl("net/ipv4/tcp_available_congestion_control")
		if err != nil {
			return "", fmt.Errorf("read available congestion controls: %w", err)
		}
		return strings.TrimSpace(data), nil
	}
	avail, err := read()
	if err != nil || strings.Contains(" "+avail+" ", " "+want+" ") {
		return avail, err
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		_ = unix.SetsockoptString(fd, unix.SOL_TCP, unix.TCP_CONGESTION, want)
		unix.Close(fd)
	}
	return read()
}

// BeforeHandshake sets what the SYN or SYN-ACK must already carry (window
// scale follows the receive buffer, the MSS option the clamp) and what a
// listener hands down to its accepted sockets.
func (l Leg) BeforeHandshake(fd int) error {
	var errs []error
	if l.CC != "" {
		errs = append(errs, sockopt.Wrap("TCP_CONGESTION", unix.SetsockoptString(fd, unix.SOL_TCP, unix.TCP_CONGESTION, l.CC)))
	}
	if l.SndBuf > 0 {
		errs = append(errs, sockopt.Wrap("SO_SNDBUFFORCE", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, l.SndBuf)))
	}
	if l.RcvBuf > 0 {
		errs = append(errs, sockopt.Wrap("SO_RCVBUFFORCE", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, l.RcvBuf)))
	}
	if l.MSS > 0 {
		errs = append(errs, sockopt.Wrap("TCP_MAXSEG", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_MAXSEG, l.MSS)))
	}
	return errors.Join(errs...)
}

// Established sets what only applies to a connected socket.
func (l Leg) Established(c *net.TCPConn) error {
	var errs []error
	if l.NoDelay != nil {
		errs = append(errs, c.SetNoDelay(*l.NoDelay))
	}
	if l.QuickAck {
		errs = append(errs, sockopt.WithFD(c, func(fd int) error {
			return sockopt.Wrap("TCP_QUICKACK", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUICKACK, 1))
		}))
	}
	// The proxy's own listener and every dial leave keepalive off; on the
	// gateway's warm connections Go turned it on (15 s) at accept. These
	// replace both.
	if l.KeepAlive > 0 {
		errs = append(errs, sockopt.Wrap("keepalive", c.SetKeepAliveConfig(net.KeepAliveConfig{
			Enable:   true,
			Idle:     l.KeepAlive,
			Interval: max(l.KeepAlive/KeepAliveProbes, time.Second),
			Count:    KeepAliveProbes,
		})))
	} else {
		errs = append(errs, sockopt.Wrap("SO_KEEPALIVE", c.SetKeepAlive(false)))
	}
	if l.UserTimeout > 0 {
		errs = append(errs, sockopt.WithFD(c, func(fd int) error {
			return sockopt.Wrap("TCP_USER_TIMEOUT", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_USER_TIMEOUT, int(l.UserTimeout.Milliseconds())))
		}))
	}
	if l.RTOMax.On() {
		errs = append(errs, l.RTOMax.apply(c, l.UserTimeout))
	}
	return errors.Join(errs...)
}

// ListenerControl returns the socket setup of the listeners: transparent,
// plus the client leg's pre-handshake tuning, inherited by accepted sockets.
func (t Tuning) ListenerControl() func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if err := sockopt.Transparent(network, address, c); err != nil {
			return err
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = t.Client.BeforeHandshake(int(fd))
			if serr == nil && t.FastOpen.Accept {
				serr = acceptFastOpen(int(fd))
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}
