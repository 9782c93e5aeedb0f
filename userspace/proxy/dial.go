// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Dialer connects server legs: the flows' (Direct, FastOpen) and the warm
// pool's connections to its gateway, all with the same socket setup.
type Dialer struct {
	Timeout     time.Duration // of a connect
	Server      tuning.Leg    // the server leg's tuning
	Tuner       UpstreamTuner // nil: no sock_ops (initial windows untouched)
	ByRTT       bool          // sock_ops tunes server legs by their round trips (--role auto)
	Transparent bool          // dial a client's flow from the client's address and port
	// Mark is the socket mark (SO_MARK) of client flows' server legs, for
	// the operator's output-hook rules (--server-mark); 0: none. pepsal's
	// own connections (DialOwn) carry none.
	Mark uint32
	Log  *slog.Logger

	tuneLog       logx.RateLog
	tuningSkipped atomic.Uint64 // server legs dialed without their sock_ops registration
	// connectObserver gets the duration of every connect dial and
	// dialFastOpen make (the metrics' histogram); nil: nobody.
	connectObserver atomic.Pointer[func(time.Duration, error)]
}

// dial connects to the original destination with the server leg's tuning
// and the client SYN's ToS. It returns the socket cookie, to unregister the
// socket from sock_ops later (forget).
func (d *Dialer) dial(ctx context.Context, src, dst netip.AddrPort, tos uint32) (*net.TCPConn, uint64, error) {
	var cookie uint64
	nd := d.netDialer(d.source(src), tos, d.Mark, &cookie)
	start := time.Now()
	conn, err := nd.DialContext(ctx, "tcp", dst.String())
	d.observeConnect(start, err)
	if err != nil {
		return nil, cookie, fmt.Errorf("dial %s: %w", dst, err)
	}
	return conn.(*net.TCPConn), cookie, nil
}

// DialOwn connects to addr from one of this host's own addresses whatever
// Transparent says, with no ToS and untimed: a connection that is pepsal's,
// not a client's (the warm pool's to its gateway; the connect histogram
// times the dials of client flows).
func (d *Dialer) DialOwn(ctx context.Context, addr string) (*net.TCPConn, error) {
	var cookie uint64
	conn, err := d.netDialer(netip.AddrPort{}, 0, 0, &cookie).DialContext(ctx, "tcp", addr)
	d.forget(cookie)
	if err != nil {
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

// netDialer dials a server leg as every dial does (dialFastOpen makes its
// socket by hand, with the same setupUpstream): the socket set up before
// its SYN, its sock_ops cookie stored in *cookie, from as its source when
// valid, with mark (0: none), no MPTCP (the kernel relay's SOCKHASH takes TCP sockets), and no
// keepalive: tuning.Leg.Established sets the leg's own (see Listen).
func (d *Dialer) netDialer(from netip.AddrPort, tos, mark uint32, cookie *uint64) *net.Dialer {
	nd := &net.Dialer{Timeout: d.Timeout, KeepAlive: -1, Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { *cookie, serr = d.setupUpstream(int(fd), network, from, tos, mark) })
		if err != nil {
			return err
		}
		return serr
	}}
	nd.SetMultipathTCP(false)
	if from.IsValid() {
		nd.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	return nd
}

// source is the address to dial a client's server leg from: the client's
// own with --transparent, else none (the kernel picks one of ours).
func (d *Dialer) source(client netip.AddrPort) netip.AddrPort {
	if d.Transparent {
		return client
	}
	return netip.AddrPort{}
}

// ObserveConnects sends every later upstream connect to f (nil: to nobody).
func (d *Dialer) ObserveConnects(f func(time.Duration, error)) {
	if f == nil {
		d.connectObserver.Store(nil)
		return
	}
	d.connectObserver.Store(&f)
}

// observeConnect reports a connect started at start that ended with err.
func (d *Dialer) observeConnect(start time.Time, err error) {
	if f := d.connectObserver.Load(); f != nil {
		(*f)(time.Since(start), err)
	}
}

// TuningSkipped is how many server legs were dialed without their sock_ops
// registration (pepsal_upstream was full).
func (d *Dialer) TuningSkipped() uint64 { return d.tuningSkipped.Load() }

// setupUpstream prepares an upstream socket before its SYN: the server leg's
// tuning, what binding to from (when valid) needs, the client's ToS, the
// mark (when not 0), and registration with sock_ops by cookie. The caller
// binds.
func (d *Dialer) setupUpstream(fd int, network string, from netip.AddrPort, tos, mark uint32) (cookie uint64, err error) {
	if err := d.Server.BeforeHandshake(fd); err != nil {
		return 0, err
	}
	if from.IsValid() {
		// The client's address is not ours; the client's port may still be
		// in TIME_WAIT from its previous connection to the same server.
		if err := sockopt.TransparentFD(fd, network); err != nil {
			return 0, err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return 0, sockopt.Wrap("SO_REUSEADDR", err)
		}
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			return 0, sockopt.Wrap("SO_MARK", err)
		}
	}
	if tos != 0 {
		if err := sockopt.SetTOS(fd, network, int(tos)); err != nil {
			return 0, err
		}
	}
	// Only the initial windows and the tuning by round trip need sock_ops
	// to know a socket is a server leg; every other option is set above.
	if d.Tuner == nil || (d.Server.InitCwnd == 0 && d.Server.InitRwnd == 0 && !d.ByRTT) {
		return 0, nil
	}
	if cookie, err = sockopt.CookieFD(fd); err != nil {
		return 0, err
	}
	if err := d.Tuner.RegisterUpstream(cookie); err != nil {
		// A full pepsal_upstream costs this leg its initial windows, not
		// the client its connection.
		d.tuningSkipped.Add(1)
		d.tuneLog.Log(d.Log, slog.LevelWarn, "server leg dialed without initial-window tuning", "err", err)
		return 0, nil
	}
	return cookie, nil
}

// forget unregisters a dialed server leg from sock_ops (cookie 0: never
// registered). sock_ops reads the entry at connect (initial receive
// window) and at establishment (initial congestion window), both behind us
// now: a live connection must not hold a slot of a bounded map.
func (d *Dialer) forget(cookie uint64) {
	if cookie != 0 {
		d.Tuner.ForgetUpstream(cookie)
	}
}
