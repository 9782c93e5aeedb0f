// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
)

// httpLimits bound what clients of the metrics server may hold.
type httpLimits struct {
	ReadHeader, Read, Write, Idle time.Duration
	MaxConns                      int
}

// metricsLimits are the metrics server's limits.
func metricsLimits() httpLimits {
	return httpLimits{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second, Idle: time.Minute, MaxConns: 64}
}

// serveMetrics serves Prometheus metrics of sp, its warm paths (peers), the
// BPF counters and the listen queues on ln until the returned stop, with
// /healthz and /ready (Health) beside them.
func serveMetrics(ln net.Listener, sp *proxy.Pipeline, peers func() *report.PeerStats, counters func() ([]loader.Counter, error),
	listen func() report.ListenStats, ops metricsOps, log *slog.Logger) (stop func(), err error) {
	m := NewMetrics(sp.Table, counters)
	m.Peer = peers
	m.Listen = listen
	m.Ifaces = ops.Ifaces
	m.RTO = ops.RTO
	m.Outages = ops.Outages
	m.Split = sp.SplitStats
	m.SetVersion(ops.Version)
	handler, err := m.Handler(log)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handler)
	mux.HandleFunc("GET /healthz", ops.Health.Healthz)
	mux.HandleFunc("GET /ready", ops.Health.Ready)
	sp.Dialer.ObserveConnects(m.ObserveConnect)
	stopHTTP := serveHTTP(ln, mux, metricsLimits(), log)
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		sp.Dialer.ObserveConnects(nil)
		stopHTTP()
	}, nil
}

// metricsOps are what the metrics server says beyond the metrics: the
// version (pepsal_build_info), the interfaces the daemon follows and the
// health checks.
type metricsOps struct {
	Version string
	Ifaces  func() []report.IfaceHealth
	Health  Health
	RTO     func() *report.RTOBound // the long legs' retransmission bound
	Outages func() *report.OutageStats
}

// serveHTTP serves h on ln within lim until the returned stop: no client
// holds a connection idle past lim.Idle or a request unfinished past
// lim.ReadHeader and lim.Read, and past lim.MaxConns open connections a
// new one is closed at once. A listener on every interface is warned of.
func serveHTTP(ln net.Listener, h http.Handler, lim httpLimits, log *slog.Logger) (stop func()) {
	if servesEverywhere(ln.Addr()) {
		log.Warn("metrics are served on every interface: give --metrics-addr an address only your Prometheus can reach, e.g. 127.0.0.1:9595", "addr", ln.Addr().String())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: lim.ReadHeader, ReadTimeout: lim.Read, WriteTimeout: lim.Write, IdleTimeout: lim.Idle,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(newCappedListener(ln, lim.MaxConns, log)); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close() // a scrape still running: cut it, the maps are about to close
		}
		<-done
	}
}

// servesEverywhere says whether a listener bound to addr takes connections
// on every interface (0.0.0.0, ::).
func servesEverywhere(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && (tcp.IP == nil || tcp.IP.IsUnspecified())
}

// cappedListener accepts at most max connections open at once; past it, a
// new connection is closed as soon as it is accepted.
type cappedListener struct {
	net.Listener
	slots chan struct{} // one token per open connection
	full  atomic.Bool   // said once each time the cap is reached
	log   *slog.Logger
}

func newCappedListener(ln net.Listener, max int, log *slog.Logger) *cappedListener {
	return &cappedListener{Listener: ln, slots: make(chan struct{}, max), log: log}
}

// Accept returns the next connection there is room for.
func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &cappedConn{Conn: c, release: sync.OnceFunc(l.release)}, nil
		default:
			if l.full.CompareAndSwap(false, true) {
				l.log.Warn("metrics: too many connections, closing new ones", "max", cap(l.slots), "from", c.RemoteAddr().String())
			}
			c.Close()
		}
	}
}

func (l *cappedListener) release() {
	<-l.slots
	l.full.Store(false)
}

// cappedConn gives its slot back when closed.
type cappedConn struct {
	net.Conn
	release func()
}

func (c *cappedConn) Close() error {
	defer c.release()
	return c.Conn.Close()
}
