package userspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Errors of the daemon, for callers to tell apart with errors.Is.
var (
	ErrOtherDaemon = errors.New("another pepsal daemon is serving this attachment")
	ErrNoSockOps   = errors.New("initial windows need the sock_ops program, which needs a cgroup v2 hierarchy: none is mounted")
	// ErrUpgradeMetrics: an upgrade's metrics address must be the running
	// daemon's (its listener is handed over, not opened again).
	ErrUpgradeMetrics = errors.New("upgrade: the metrics listener differs from the running daemon's")
)

// Attachment is what the daemon needs of the BPF side it serves
// (loader.Attachment implements it).
type Attachment interface {
	ListenerRegistry
	proxy.DivertedSYNs
	// SetFull tells the classifier to forward new connections unsplit.
	SetFull(full bool) error
	// RecordFastOpenRestore keeps the tcp_fastopen value a detach restores.
	RecordFastOpenRestore(old int) error
	// TakeOver makes this process the attachment's owner in place of fromPID.
	TakeOver(fromPID int) error
	Counters() ([]loader.Counter, error)
	Ifaces() ([]loader.Iface, error)
	// OwnedByMe: this process created the attachment (a detach will follow).
	OwnedByMe() bool
	// EnableKernelRelay probes the kernel and attaches the relay verdict; a
	// *loader.Unsupported error says why this kernel cannot relay safely.
	EnableKernelRelay() error
}

// Tuner is the sock_ops tuning as the daemon drives it (loader.Tuner).
type Tuner interface {
	proxy.UpstreamTuner
	SetLegs(client, server loader.LegTuning) error
	// SetPeerPort makes sock_ops tune the sockets of the warm-path listener.
	SetPeerPort(port uint16) error
	Close() error
}

// Kernel is the attached BPF side, as Options.Attach hands it over.
type Kernel struct {
	Attachment
	Tuner  Tuner      // nil: no sock_ops on this host
	Relay  relay.Maps // the kernel relay's maps
	PinDir string     // for the log
	// Close releases the handles (and removes what the daemon owns); the
	// daemon calls it last.
	Close func() error
}

var (
	_ Attachment = (*loader.Attachment)(nil)
	_ Tuner      = (*loader.Tuner)(nil)
)

// Listener slots of pepsal_listener (loader.ListenerV4, loader.ListenerV6).
const (
	slotV4 = loader.ListenerV4
	slotV6 = loader.ListenerV6
)

// PeerOptions configure warm paths: a gateway listens for terminals, a
// terminal keeps a pool of connections to its gateway.
type PeerOptions struct {
	Listen  string         // gateway: ADDR:PORT; "": not a gateway
	Allow   []netip.Prefix // gateway: accepted sources; empty: any
	Gateway string         // terminal: the gateway's ADDR:PORT; "": not a terminal
	Pool    int            // terminal: idle warm connections kept
	Key     []byte         // pre-shared key of both
}

// Options are a daemon's settings, checked by the caller (the CLI names its
// flags in its errors; the daemon does not know them).
type Options struct {
	Tuning         tuning.Tuning
	Relay          string // "splice" or "sockmap"
	RelayBudget    uint64 // sockmap: bytes redirected toward a socket and not yet in its send queue
	OffloadAfter   int64  // sockmap: bytes a connection moves by splice before it goes into the kernel (0: at once)
	ListenPort     int    // the proxy's listeners, on 127.0.0.1 and ::1
	ConnectTimeout time.Duration
	DrainTimeout   time.Duration // on SIGTERM/SIGINT, before live connections are reset
	UpgradeDrain   time.Duration // on SIGHUP, how long the old daemon relays its live connections
	Transparent    bool
	MetricsAddr    string // "": no metrics
	MaxConns       int    // the admission limit
	MaxConnsFrom   string // what set it (logged)
	FDBudget       proxy.FDBudget
	Peer           PeerOptions
	Version        string
	Args           []string // the successor's arguments at an upgrade
	Log            *slog.Logger
	// Attach attaches the BPF side or opens the existing attachment. It is
	// called once the listeners are bound: a taken port changes nothing.
	Attach func() (*Kernel, error)
}

// Daemon is a running pepsal: listeners, the BPF attachment, the pipeline,
// the control socket, metrics, upgrades by SIGHUP.
type Daemon struct {
	opts Options
	log  *slog.Logger
}

// NewDaemon checks the options that the caller cannot get wrong silently.
func NewDaemon(opts Options) (*Daemon, error) {
	var mode relay.Mode
	if err := mode.UnmarshalText([]byte(opts.Relay)); err != nil {
		return nil, err
	}
	if opts.Attach == nil {
		return nil, errors.New("no attachment")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Daemon{opts: opts, log: opts.Log}, nil
}

type slotListener struct {
	slot uint32
	ln   *net.TCPListener
}

// Run serves until ctx is done or a signal stops it (SIGTERM/SIGINT: drain,
// then reset; SIGHUP: hand over to the binary now on disk).
func (d *Daemon) Run(ctx context.Context) (err error) {
	o, log := &d.opts, d.log
	// Started by an upgrade: the old daemon's sockets, not new ones.
	inherited, err := InheritedFromEnv()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	peerGateway, err := d.listenGateway(inherited)
	if err != nil {
		if inherited != nil {
			inherited.Close()
		}
		return err
	}
	if peerGateway != nil {
		defer peerGateway.Close()
	}
	// The binary to start on SIGHUP: this path, whatever file is there then.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program's path: %w", err)
	}
	var (
		control   net.Listener
		listeners []slotListener
		metricsLn net.Listener
	)
	if inherited != nil {
		control, metricsLn = inherited.Control, inherited.Metrics
		listeners = []slotListener{{slotV4, inherited.V4}}
		if inherited.V6 != nil {
			listeners = append(listeners, slotListener{slotV6, inherited.V6})
		}
		if (metricsLn != nil) != (o.MetricsAddr != "") {
			inherited.Close()
			return ErrUpgradeMetrics
		}
	} else {
		if control, err = ListenControl(); err != nil {
			return err
		}
		if listeners, err = listenProxy(o.ListenPort, o.Tuning, log); err != nil {
			control.Close()
			return err
		}
		// Bound before anything is attached, so that a taken port changes nothing.
		if o.MetricsAddr != "" {
			if metricsLn, err = net.Listen("tcp", o.MetricsAddr); err != nil {
				control.Close()
				for _, ln := range listeners {
					ln.ln.Close()
				}
				return &proxy.ListenError{What: "metrics", Addr: o.MetricsAddr, Err: err}
			}
		}
	}
	defer control.Close()
	defer func() {
		for _, ln := range listeners {
			ln.ln.Close()
		}
	}()
	if metricsLn != nil {
		defer metricsLn.Close()
	}

	k, err := o.Attach()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := k.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	ownAttachment := k.OwnedByMe()
	if cookie := firstListenerCookie(k); cookie != 0 && (inherited == nil || cookie != listenerCookie(inherited.V4)) {
		return ErrOtherDaemon
	}
	// After a successful upgrade the attachment and its sysctls are the new
	// daemon's: this one leaves them alone when it exits.
	var handedOver atomic.Bool
	if o.Tuning.FastOpen.Accept {
		old, changed, err := tuning.EnableServerFastOpen()
		if err != nil {
			return err
		}
		if changed {
			var oldV int
			fmt.Sscan(old, &oldV)
			if err := k.RecordFastOpenRestore(oldV); err != nil {
				return err
			}
			if !ownAttachment { // a detach would restore it; without one, the daemon does
				defer func() {
					if !handedOver.Load() {
						sockopt.WriteSysctl("net/ipv4/tcp_fastopen", old)
					}
				}()
			}
		}
	}

	// A full flag left by a daemon killed at its limit must not outlive it.
	if err := k.SetFull(false); err != nil {
		return err
	}
	var tcpListeners []*net.TCPListener
	var addrs []string
	for _, l := range listeners {
		ln := l.ln
		// The accept queue the fd budget counts on (listen again only sets it).
		if err := sockopt.WithFD(ln, func(fd int) error { return unix.Listen(fd, o.FDBudget.Backlog) }); err != nil {
			return fmt.Errorf("set listener backlog: %w", err)
		}
		if err := sockopt.WithFD(ln, func(fd int) error { return k.RegisterListener(l.slot, fd) }); err != nil {
			return err
		}
		tcpListeners = append(tcpListeners, ln)
		addrs = append(addrs, ln.Addr().String())
	}

	pipeline := proxy.NewPipeline(tcpListeners, proxy.Config{ConnectTimeout: o.ConnectTimeout, Tuning: o.Tuning, Transparent: o.Transparent,
		Diverted: k, Tuner: k.Tuner, Log: log})
	defer pipeline.Close()
	if k.Tuner != nil {
		defer k.Tuner.Close()
		if err := k.Tuner.SetLegs(
			loader.LegTuning{InitCwnd: o.Tuning.Client.InitCwnd, InitRwnd: o.Tuning.Client.InitRwnd},
			loader.LegTuning{InitCwnd: o.Tuning.Server.InitCwnd, InitRwnd: o.Tuning.Server.InitRwnd},
		); err != nil {
			return err
		}
	} else if o.Tuning.Client.InitCwnd+o.Tuning.Client.InitRwnd+o.Tuning.Server.InitCwnd+o.Tuning.Server.InitRwnd > 0 {
		return ErrNoSockOps
	}
	pipeline.SetPipeLimit(relay.PipeLimit(o.MaxConns))
	setFull := func(full bool) error {
		if handedOver.Load() {
			return nil // the new daemon counts from now on
		}
		return k.SetFull(full)
	}
	admission := proxy.NewAdmission(o.MaxConns, setFull, log)
	admission.FDLimit = o.FDBudget.Limit
	pipeline.Table.SetAdmission(admission)
	peerCtx, stopPeers := context.WithCancel(context.Background())
	defer stopPeers()
	pool, err := d.startPeers(peerCtx, pipeline, k.Tuner, peerGateway)
	if err != nil {
		return err
	}
	peers := func() *report.PeerStats { return peerStats(pool, peerGateway) }
	inUse, off, err := chooseRelay(o.Relay, k.EnableKernelRelay)
	if err != nil {
		return err
	}
	ifaces, _ := k.Ifaces()
	off = append(off, tcxOff(ifaces)...)
	off = append(off, windowOff(o.Tuning, ProbeLargeInitialWindow)...)
	for _, o := range off {
		log.Warn(o.String())
	}
	if inUse == relay.ModeSockmap.String() {
		pipeline.Relay = &relay.Kernel{Log: log, Maps: k.Relay, Budget: o.RelayBudget, OffloadAfter: o.OffloadAfter, Splice: pipeline.Splice}
	}
	start := time.Now()
	info := func() report.DaemonInfo {
		return report.DaemonInfo{
			PID: os.Getpid(), Version: o.Version, Relay: inUse, RelayAsked: o.Relay, Off: off, Listeners: addrs,
			ConnectTimeout: o.ConnectTimeout.String(), UptimeSeconds: time.Since(start).Seconds(),
			Stats: pipeline.Table.Stats(), Peer: peers(), SplitStats: pipeline.SplitStats(),
		}
	}
	go ServeControl(control, info, pipeline.Table, log)
	stopMetrics := func() {}
	if metricsLn != nil {
		stop, err := serveMetrics(metricsLn, pipeline, peers, k.Counters, log)
		if err != nil {
			return err
		}
		stopMetrics = sync.OnceFunc(stop) // at an upgrade, or before the maps close
		defer stopMetrics()
	}

	names := make([]string, 0, len(ifaces))
	for _, i := range ifaces {
		names = append(names, i.Name)
	}
	log.Info("serving", "ifaces", strings.Join(names, ","), "relay", inUse, "listeners", strings.Join(addrs, ","), "pin_dir", k.PinDir,
		"max_conns", o.MaxConns, "low_water", admission.Low, "max_conns_from", o.MaxConnsFrom, "fd_limit", o.FDBudget.Limit)

	if inherited != nil {
		if err := k.TakeOver(inherited.ParentPID); err != nil {
			return err
		}
		if err := inherited.Ready(); err != nil {
			return fmt.Errorf("upgrade: tell the old daemon: %w", err)
		}
		log.Info("upgraded: serving in place of the old daemon", "old_pid", inherited.ParentPID)
		notify(log, fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
	} else {
		notify(log, "READY=1")
	}

	// Stop accepting on SIGTERM/SIGINT (drain, then reset), or once a new
	// daemon took the sockets over after SIGHUP (relay the live connections
	// for up to UpgradeDrain).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	// A terminal that no longer accepts flows has no use for its warm
	// connections: let the gateway have them back now, not when the last
	// live connection of a drain (up to --upgrade-drain) ends.
	context.AfterFunc(serveCtx, stopPeers)
	drainCtx, cancelDrain := context.WithCancel(context.Background())
	defer cancelDrain()
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)
	go func() {
		for {
			var sig os.Signal
			select {
			case sig = <-signals:
			case <-ctx.Done():
				sig = syscall.SIGTERM
			}
			if sig == syscall.SIGHUP {
				if handedOver.Load() {
					continue
				}
				notify(log, "RELOADING=1")
				h := Handed{Control: control, V4: listeners[0].ln, Metrics: metricsLn}
				if len(listeners) > 1 {
					h.V6 = listeners[1].ln
				}
				if peerGateway != nil {
					h.Peer = peerGateway.Listener()
				}
				pid, err := StartSuccessor(exe, o.Args, h, 30*time.Second)
				if err != nil {
					log.Error("upgrade failed: still serving", "binary", exe, "err", err)
					notify(log, "READY=1")
					continue
				}
				handedOver.Store(true)
				if peerGateway != nil {
					peerGateway.HandedOver() // its waiting warm connections stay until used
				}
				control.Close() // `pepsal status` now reaches the new daemon
				stopMetrics()   // and so do scrapes
				log.Info("upgraded: the new daemon serves; relaying the live connections", "new_pid", pid, "live", pipeline.Table.Len(), "upgrade_drain", o.UpgradeDrain)
				stopServing()
				time.AfterFunc(o.UpgradeDrain, cancelDrain)
				continue
			}
			if serveCtx.Err() == nil {
				log.Info("stopping: no new connections", "live", pipeline.Table.Len(), "drain_timeout", o.DrainTimeout)
				stopServing()
				time.AfterFunc(o.DrainTimeout, cancelDrain)
				continue
			}
			// A second signal, or SIGTERM while draining after an upgrade.
			log.Info("resetting live connections", "live", pipeline.Table.Len())
			cancelDrain()
			return
		}
	}()
	pipeline.Serve(serveCtx, drainCtx)
	return nil
}

// chooseRelay settles the relay a daemon uses: the kernel relay (asked
// "sockmap") only where enable, the kernel's probe and the verdict's
// attachment, succeeds; splice where it says the kernel cannot
// (*loader.Unsupported), with what is off and why for the log and status.
func chooseRelay(asked string, enable func() error) (relay string, off []report.Off, err error) {
	if asked != "sockmap" {
		return asked, nil, nil
	}
	err = enable()
	var un *loader.Unsupported
	switch {
	case err == nil:
		return "sockmap", nil, nil
	case errors.As(err, &un):
		return "splice", []report.Off{{Feature: un.Feature, Why: un.Why, Instead: "every connection is relayed by splice"}}, nil
	default:
		return "", nil, fmt.Errorf("kernel relay: %w", err)
	}
}

// tcxOff says that the classifier is a clsact filter because the kernel has
// no tcx (nothing is lost: an operator reading bpftool should know why).
func tcxOff(ifaces []loader.Iface) []report.Off {
	for _, i := range ifaces {
		var un *loader.Unsupported
		if i.TCMode == "clsact" && errors.As(loader.ProbeTCX(), &un) {
			return []report.Off{{Feature: un.Feature, Why: un.Why, Instead: "the classifier is attached as a clsact filter"}}
		}
	}
	return nil
}

// notify tells systemd (Type=notify) how the daemon stands.
func notify(log *slog.Logger, state string) {
	if err := Notify(state); err != nil {
		log.Warn("systemd notify", "err", err)
	}
}

// listenerCookie is the socket cookie of a listener, 0 if unknown.
func listenerCookie(ln *net.TCPListener) uint64 {
	cookie, _ := sockopt.Cookie(ln)
	return cookie
}

func firstListenerCookie(r ListenerRegistry) uint64 {
	if c := r.ListenerCookie(slotV4); c != 0 {
		return c
	}
	return r.ListenerCookie(slotV6)
}

// listenProxy opens the IPv4 and IPv6 listeners on loopback addresses, where
// no remote host can reach them directly. IPv6 is skipped on a host without it.
func listenProxy(port int, t tuning.Tuning, log *slog.Logger) ([]slotListener, error) {
	ln4, err := proxy.Listen(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), t)
	if err != nil {
		return nil, err
	}
	out := []slotListener{{slotV4, ln4}}
	ln6, err := proxy.Listen(net.JoinHostPort("::1", strconv.Itoa(port)), t)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			ln4.Close()
			return nil, err
		}
		log.Warn("no IPv6 listener: IPv6 connections will be forwarded unsplit", "err", err)
		return out, nil
	}
	return append(out, slotListener{slotV6, ln6}), nil
}

// listenGateway opens the gateway's listener for terminals (before anything
// is attached, so that a taken port changes nothing), or takes the one an
// upgraded daemon handed over; nil when not a gateway.
func (d *Daemon) listenGateway(in *Inherited) (*peer.Gateway, error) {
	p := d.opts.Peer
	var handed *net.TCPListener
	if in != nil {
		handed, in.Peer = in.Peer, nil
	}
	if p.Listen == "" {
		if handed != nil {
			handed.Close()
		}
		return nil, nil
	}
	var g *peer.Gateway
	var err error
	if handed != nil {
		g, err = peer.GatewayOn(handed, d.opts.Tuning)
		if err != nil {
			handed.Close()
		}
	} else {
		g, err = peer.Listen(p.Listen, d.opts.Tuning)
	}
	if err != nil {
		return nil, err
	}
	g.Key, g.Allow = p.Key, p.Allow
	return g, nil
}

// startPeers wires warm paths into the pipeline: the gateway's listener
// (served with the proxy's, its flows dialed directly) and its sockets'
// initial windows, the terminal's pool (run until ctx ends) in front of the
// proxy listeners' upstream.
func (d *Daemon) startPeers(ctx context.Context, sp *proxy.Pipeline, tuner Tuner, g *peer.Gateway) (*peer.Pool, error) {
	p := d.opts.Peer
	if g != nil {
		if tuner != nil {
			if err := tuner.SetPeerPort(g.Port()); err != nil {
				return nil, err
			}
		}
		sp.Accept(g, proxy.Direct{Dialer: sp.Dialer})
		d.log.Info("accepting warm connections from terminals", "listen", g.Addr().String(), "allow", len(p.Allow))
	}
	var pool *peer.Pool
	if p.Gateway != "" {
		pool = peer.NewPool(p.Gateway, p.Pool, p.Key, sp.Dialer, sp.Log)
		go pool.Run(ctx)
		sp.Upstream = peer.Warm{Pool: pool, Fallback: sp.Upstream}
		d.log.Info("keeping warm connections to the gateway", "gateway", p.Gateway, "pool", p.Pool)
	}
	return pool, nil
}

// peerStats is the daemon's peer report (nil without warm paths).
func peerStats(pool *peer.Pool, g *peer.Gateway) *report.PeerStats {
	if pool == nil && g == nil {
		return nil
	}
	var ps report.PeerStats
	if pool != nil {
		st := pool.Stats()
		ps.Pool = &st
	}
	if g != nil {
		st := g.Stats()
		ps.Gateway = &st
	}
	return &ps
}

// serveMetrics serves Prometheus metrics of sp, its warm paths (peers) and
// the BPF counters on ln until the returned stop.
func serveMetrics(ln net.Listener, sp *proxy.Pipeline, peers func() *report.PeerStats, counters func() ([]loader.Counter, error), log *slog.Logger) (stop func(), err error) {
	m := NewMetrics(sp.Table, counters)
	m.Peer = peers
	m.Split = sp.SplitStats
	handler, err := m.Handler(log)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	sp.Dialer.ObserveConnects(m.ObserveConnect)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		sp.Dialer.ObserveConnects(nil)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close() // a scrape still running: cut it, the maps are about to close
		}
		<-done
	}, nil
}
