// Package userspace is pepsal's proxy: it accepts the connections that the BPF
// side steers to its listener, dials the original destination, and relays.
package userspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Splitter accepts diverted connections and splits them.
type Splitter struct {
	ConnectTimeout time.Duration
	Relay          relay.Relay // moves the bytes: Splice (NewSplitter's), or a kernel relay over it
	Tuning         tuning.Tuning
	Diverted       DivertedSYNs  // the SYN's record, read and deleted after accept; nil: none
	Tuner          UpstreamTuner // nil: no sock_ops (initial windows untouched)
	Transparent    bool          // dial from the client's address and port
	Table          *Table
	Log            *slog.Logger
	// OnExhausted, if set, is called each time accept or an upstream dial
	// fails for want of a local resource (fds, memory, ports).
	OnExhausted func()
	// Pool (terminal): warm connections to the gateway pepsal; nil: none.
	Pool *PeerPool
	// Peers (gateway): the listener for terminals' warm connections; nil: none.
	Peers *PeerGateway

	listeners []*net.TCPListener
	own       map[netip.AddrPort]bool // the listeners' own addresses: never a destination
	wg        sync.WaitGroup
	// Splice is the splice relay, its pipes and idle waiter (NewSplitter
	// makes them; Close closes the waiter): a kernel relay falls back to it.
	Splice relay.Splice

	localLog, tuneLog logx.RateLog
	stats             splitStats
	// connectObserver gets the duration of every upstream connect dial and
	// dialFastOpen make (the metrics' histogram); nil: nobody.
	connectObserver atomic.Pointer[func(time.Duration, error)]
}

// NewSplitter prepares a splitter serving the given listeners.
func NewSplitter(listeners []*net.TCPListener, connectTimeout time.Duration, log *slog.Logger) *Splitter {
	s := &Splitter{ConnectTimeout: connectTimeout, Table: NewTable(), Log: log, listeners: listeners, own: map[netip.AddrPort]bool{},
		localLog: logx.RateLog{Period: 5 * time.Second}, tuneLog: logx.RateLog{Period: 5 * time.Second}}
	for _, ln := range listeners {
		s.own[sockopt.AddrPort(ln.Addr())] = true
	}
	// The idle waiter's epoll fd is the daemon's for good: open it now, not
	// with the first connection (a leak check takes its baseline after start).
	waiter, _ := relay.NewIdleWaiter(log) // nil: each direction parks a goroutine instead
	s.Splice = relay.Splice{Pipes: &relay.Pipes{}, Waiter: waiter}
	s.Relay = s.Splice
	return s
}

// Close releases what NewSplitter opened (the idle waiter), once no
// connection is relayed any more: after Serve, or instead of it.
func (s *Splitter) Close() error {
	if s.Splice.Waiter == nil {
		return nil
	}
	return s.Splice.Waiter.Close()
}

// SetPipeLimit bounds the splice pipes open at once (PipeLimit of the
// admission limit), so that pipes never take the fds accept and dial need.
func (s *Splitter) SetPipeLimit(n int) { s.Splice.Pipes.SetLimit(n) }

// Serve accepts until ctx is done, then waits for live connections to end, at
// most until drainCtx is done, after which they are reset.
func (s *Splitter) Serve(ctx, drainCtx context.Context) {
	var acceptWG sync.WaitGroup
	connCtx, cancelConns := context.WithCancel(context.Background())
	defer cancelConns()
	up := s.proxyUpstream()
	for _, ln := range s.listeners {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			s.acceptLoop(connCtx, ln, up)
		}()
	}
	if s.Peers != nil {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			s.peerAcceptLoop(connCtx, s.Peers)
		}()
	}
	<-ctx.Done()
	for _, ln := range s.listeners {
		ln.Close() // its SOCKMAP entry goes with it: new SYNs are forwarded unsplit
	}
	if s.Peers != nil {
		s.Peers.Close()
	}
	acceptWG.Wait()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-drainCtx.Done():
		if n := s.Table.Len(); n > 0 {
			s.Log.Info("drain timeout: resetting live connections", "count", n)
		}
		cancelConns()
		<-done
	}
}

// acceptLoop splits each connection of a proxy listener until it closes;
// up reaches their servers.
func (s *Splitter) acceptLoop(ctx context.Context, ln *net.TCPListener, up Upstream) {
	s.acceptEach(ln, "proxy", func(conn *net.TCPConn) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.split(ctx, conn, up)
		}()
	})
}

// acceptEach hands each accepted connection to handle until the listener is
// closed. Other errors (EMFILE and the like) are waited out with a growing
// pause: the connection stays in the kernel's accept queue meanwhile.
func (s *Splitter) acceptEach(ln *net.TCPListener, what string, handle func(*net.TCPConn)) {
	backoff := logx.AcceptBackoff{Log: s.Log, What: what}
	for {
		conn, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.onLocalExhaustion(err)
			backoff.Failed(err)
			continue
		}
		backoff.OK()
		handle(conn)
	}
}

// split sets up a connection of a proxy listener: the kernel has completed
// the client's handshake on behalf of the server; now reach the server or
// reset the client.
func (s *Splitter) split(ctx context.Context, client *net.TCPConn, up Upstream) {
	s.setup(ctx, &Flow{
		Leg:     client,
		LegName: "client leg",
		Client:  sockopt.AddrPort(client.RemoteAddr()),
		Dst:     sockopt.AddrPort(client.LocalAddr()), // sk_lookup keeps the original destination
		Prepare: s.readFirst,
	}, up)
}

// readFirst takes what a proxy listener's flow brings before its server
// leg: its SYN's ToS, and with fast open its first bytes.
func (s *Splitter) readFirst(f *Flow) error {
	if s.Diverted != nil {
		if info, ok := s.Diverted.TakeDiverted(f.Client, f.Dst); ok {
			f.ToS = info.Tos
		}
	}
	if !s.Tuning.FastOpen.Dial {
		return nil
	}
	first, drained, err := firstBytes(f.Leg, s.Tuning.FastOpen.Wait)
	if err != nil && !errors.Is(err, io.EOF) {
		return &flowError{outcome: conn.WasReset, level: slog.LevelDebug, msg: "client failed before its first bytes", err: err}
	}
	f.First, f.PartlyRead = first, !drained
	return nil
}

// dial connects to the original destination with the server leg's tuning
// and the client SYN's ToS. It returns the socket cookie, to unregister the
// socket from sock_ops later.
func (s *Splitter) dial(ctx context.Context, src, dst netip.AddrPort, tos uint32) (*net.TCPConn, uint64, error) {
	var cookie uint64
	d := s.dialer(s.source(src), tos, &cookie)
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", dst.String())
	s.observeConnect(start, err)
	if err != nil {
		return nil, cookie, fmt.Errorf("dial %s: %w", dst, err)
	}
	return conn.(*net.TCPConn), cookie, nil
}

// dialer dials a server leg as every dial does (dialFastOpen makes its
// socket by hand, with the same setupUpstream): the socket set up before
// its SYN, its sock_ops cookie stored in *cookie, from as its source when
// valid, no MPTCP (the kernel relay's SOCKHASH takes TCP sockets), and no
// keepalive: tuning.Leg.Established sets the leg's own (see Listen).
func (s *Splitter) dialer(from netip.AddrPort, tos uint32, cookie *uint64) *net.Dialer {
	d := &net.Dialer{Timeout: s.ConnectTimeout, KeepAlive: -1, Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { *cookie, serr = s.setupUpstream(int(fd), network, from, tos) })
		if err != nil {
			return err
		}
		return serr
	}}
	d.SetMultipathTCP(false)
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	return d
}

// source is the address to dial a client's server leg from: the client's
// own with --transparent, else none (the kernel picks one of ours).
func (s *Splitter) source(client netip.AddrPort) netip.AddrPort {
	if s.Transparent {
		return client
	}
	return netip.AddrPort{}
}

// ObserveConnects sends every later upstream connect to f (nil: to nobody).
func (s *Splitter) ObserveConnects(f func(time.Duration, error)) {
	if f == nil {
		s.connectObserver.Store(nil)
		return
	}
	s.connectObserver.Store(&f)
}

// observeConnect reports a connect started at start that ended with err.
func (s *Splitter) observeConnect(start time.Time, err error) {
	if f := s.connectObserver.Load(); f != nil {
		(*f)(time.Since(start), err)
	}
}

// setupUpstream prepares an upstream socket before its SYN: the server leg's
// tuning, what binding to from (when valid) needs, the client's ToS, and
// registration with sock_ops by cookie. The caller binds.
func (s *Splitter) setupUpstream(fd int, network string, from netip.AddrPort, tos uint32) (cookie uint64, err error) {
	if err := s.Tuning.Server.BeforeHandshake(fd); err != nil {
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
	if tos != 0 {
		if err := sockopt.SetTOS(fd, network, int(tos)); err != nil {
			return 0, err
		}
	}
	// Only the initial windows need sock_ops to know a socket is a server
	// leg; every other option is set above.
	if s.Tuner == nil || (s.Tuning.Server.InitCwnd == 0 && s.Tuning.Server.InitRwnd == 0) {
		return 0, nil
	}
	if cookie, err = sockopt.CookieFD(fd); err != nil {
		return 0, err
	}
	if err := s.Tuner.RegisterUpstream(cookie); err != nil {
		// A full pepsal_upstream costs this leg its initial windows, not
		// the client its connection.
		s.stats.tuningSkipped.Add(1)
		s.tuneLog.Log(s.Log, slog.LevelWarn, "server leg dialed without initial-window tuning", "err", err)
		return 0, nil
	}
	return cookie, nil
}
