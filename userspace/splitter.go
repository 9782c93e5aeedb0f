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
	for _, ln := range s.listeners {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			s.acceptLoop(connCtx, ln)
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

// acceptLoop splits each connection of a proxy listener until it closes.
func (s *Splitter) acceptLoop(ctx context.Context, ln *net.TCPListener) {
	s.acceptEach(ln, "proxy", func(conn *net.TCPConn) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.split(ctx, conn)
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

// split handles one connection: the kernel has completed the client's
// handshake on behalf of the server; now reach the server or reset the client.
func (s *Splitter) split(ctx context.Context, client *net.TCPConn) {
	clientAddr := sockopt.AddrPort(client.RemoteAddr())
	serverAddr := sockopt.AddrPort(client.LocalAddr()) // sk_lookup keeps the original destination
	c := s.Table.Add(clientAddr, serverAddr, s.Relay.Via())
	// Built when a line is written, not held for the connection's life:
	// thousands of idle connections would each keep a logger.
	log := logx.ConnLogger{Log: s.Log, ID: c.ID, Client: clientAddr, Server: serverAddr}

	if err := sockopt.ResetOnCrash(client); err != nil {
		log.Warn("client leg", "err", err)
	}

	if s.own[serverAddr] || serverAddr.Addr().Unmap().IsLoopback() {
		// A connection to the proxy itself would be relayed back to itself.
		sockopt.Reset(client)
		s.Table.Remove(c, conn.LoopRefused)
		log.Info("refused: connection to the proxy's own address")
		return
	}

	var tos uint32
	if s.Diverted != nil {
		if info, ok := s.Diverted.TakeDiverted(clientAddr, serverAddr); ok {
			tos = info.Tos
		}
	}
	var first []byte
	drained := true // no partly read skb left on the client socket
	if s.Tuning.FastOpen.Dial {
		var err error
		first, drained, err = firstBytes(client, s.Tuning.FastOpen.Wait)
		if err != nil && !errors.Is(err, io.EOF) {
			sockopt.Reset(client)
			s.Table.Remove(c, conn.WasReset)
			log.Debug("client failed before its first bytes", "err", err)
			return
		}
	}
	if s.Pool != nil {
		if w := s.Pool.take(); w != nil {
			s.splitWarm(ctx, c, client, w, tos, first, drained)
			return
		}
	}
	var server *net.TCPConn
	var upstreamCookie uint64
	var err error
	if len(first) > 0 {
		log.Debug("dial with fast open", "first_bytes", len(first))
		server, upstreamCookie, err = s.dialFastOpen(ctx, clientAddr, serverAddr, tos, first)
	} else {
		server, upstreamCookie, err = s.dial(ctx, clientAddr, serverAddr, tos)
	}
	if upstreamCookie != 0 {
		// sock_ops reads the entry at connect (initial receive window) and
		// at establishment (initial congestion window), both behind us now:
		// a live connection must not hold a slot of a bounded map.
		s.Tuner.ForgetUpstream(upstreamCookie)
	}
	if err != nil {
		// The client believes it is connected: only an RST tells it the truth.
		sockopt.Reset(client)
		if IsLocalFailure(err) {
			s.stats.localFailed.Add(1)
			s.Table.Remove(c, conn.LocalFailed)
			s.onLocalExhaustion(err)
			s.localLog.Log(s.Log, slog.LevelWarn, "connection reset: this host is short of a resource", "client", clientAddr, "server", serverAddr, "err", err)
			return
		}
		s.Table.Remove(c, conn.UpstreamFailed)
		log.Info("upstream connect failed", "err", err)
		return
	}
	if err := sockopt.ResetOnCrash(server); err != nil {
		log.Warn("server leg", "err", err)
	}
	if err := s.Tuning.Client.Established(client); err != nil {
		log.Warn("tune client leg", "err", err)
	}
	if err := s.Tuning.Server.Established(server); err != nil {
		log.Warn("tune server leg", "err", err)
	}
	c.SetState("established")
	c.SetLegs(client, server)
	log.Debug("split")

	stop := context.AfterFunc(ctx, func() { sockopt.Reset(client); sockopt.Reset(server) })
	c.AddMoved(int64(len(first)), 0)
	// The relay runs on without this goroutine (an idle connection holds
	// none); the connection counts as live for Serve's drain until done.
	s.wg.Add(1)
	done := func(how conn.Outcome) {
		defer s.wg.Done()
		stop()
		s.Table.Remove(c, how)
		m := c.Moved()
		log.Debug("closed", "outcome", how, "to_server", m.ToServer, "to_client", m.ToClient, "kernel", m.KernelToServer+m.KernelToClient)
	}
	s.Relay.Start(ctx, c, client, server, relay.Setup{Pre: int64(len(first)), PartlyRead: !drained}, done)
}

// dial connects to the original destination with the server leg's tuning
// and the client SYN's ToS. It returns the socket cookie, to unregister the
// socket from sock_ops later.
func (s *Splitter) dial(ctx context.Context, src, dst netip.AddrPort, tos uint32) (*net.TCPConn, uint64, error) {
	var cookie uint64
	// KeepAlive -1: tuning.Leg.Established sets the leg's own (see Listen).
	d := net.Dialer{Timeout: s.ConnectTimeout, KeepAlive: -1, Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { cookie, serr = s.setupUpstream(int(fd), network, tos) })
		if err != nil {
			return err
		}
		return serr
	}}
	d.SetMultipathTCP(false)
	if s.Transparent {
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
	}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", dst.String())
	s.observeConnect(start, err)
	if err != nil {
		return nil, cookie, fmt.Errorf("dial %s: %w", dst, err)
	}
	return conn.(*net.TCPConn), cookie, nil
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
// tuning, the client's ToS, and registration with sock_ops by cookie.
func (s *Splitter) setupUpstream(fd int, network string, tos uint32) (cookie uint64, err error) {
	if err := s.Tuning.Server.BeforeHandshake(fd); err != nil {
		return 0, err
	}
	if s.Transparent {
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
