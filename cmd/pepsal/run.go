package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

type runFlags struct {
	policy         policyFlags
	tuning         tuningFlags
	peer           peerFlags
	relay          string
	relayBudget    string
	listenPort     int
	connectTimeout time.Duration
	drainTimeout   time.Duration
	upgradeDrain   time.Duration
	logLevel       string
	transparent    bool
	metricsAddr    string
	maxConns       string
}

func runCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Attach to the given interfaces (or use the existing attachment) and split connections until stopped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, &f)
		},
	}
	f.policy.register(cmd)
	f.tuning.register(cmd)
	f.peer.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.relay, "relay", "splice", "relay mode: splice (userspace, zero-copy) or sockmap (in-kernel)")
	fl.StringVar(&f.relayBudget, "relay-budget", "4MiB", "sockmap relay: bytes per direction redirected toward a socket and not yet in its TCP send queue, beyond which the sender is slowed by TCP flow control")
	fl.IntVar(&f.listenPort, "listen-port", 5000, "port of the proxy's listeners on 127.0.0.1 and ::1")
	fl.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "give up on the upstream connection (and reset the client) after this long")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 5*time.Second, "on SIGTERM/SIGINT, wait this long for live connections before resetting them")
	fl.DurationVar(&f.upgradeDrain, "upgrade-drain", time.Hour, "on SIGHUP (upgrade), the old daemon relays its live connections for at most this long, then resets what is left")
	fl.BoolVar(&f.transparent, "transparent", false, "dial servers from the client's own address and port, so they see the real client; replies are taken on --return-iface (default: every other interface)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR:PORT/metrics (default: off)")
	registerMaxConns(fl, &f.maxConns)
	return cmd
}

func run(cmd *cobra.Command, f *runFlags) (err error) {
	ctx := cmd.Context()
	// Everything that can be checked is checked before anything is touched.
	cfg, err := f.policy.config()
	if err != nil {
		return err
	}
	tuning, err := f.tuning.tuning(cmd)
	if err != nil {
		return err
	}
	if f.transparent && len(cfg.Ifaces) > 0 && len(cfg.ReturnIfaces) == 0 {
		if cfg.ReturnIfaces, err = otherIfaces(cfg.Ifaces); err != nil {
			return err
		}
	}
	switch f.relay {
	case "splice", "sockmap":
	default:
		return fmt.Errorf("--relay must be splice or sockmap, not %q", f.relay)
	}
	budget, err := parseSize(f.relayBudget)
	if err != nil || budget < 64<<10 {
		return fmt.Errorf("bad --relay-budget %q: want a size of at least 64KiB, e.g. 4MiB", f.relayBudget)
	}
	if f.listenPort < 1 || f.listenPort > 65535 {
		return fmt.Errorf("--listen-port %d is not a port (1-65535)", f.listenPort)
	}
	if f.connectTimeout <= 0 {
		return fmt.Errorf("--connect-timeout must be positive")
	}
	if f.upgradeDrain <= 0 {
		return fmt.Errorf("--upgrade-drain must be positive")
	}
	if f.metricsAddr != "" {
		if err := checkHostPort(f.metricsAddr); err != nil {
			return fmt.Errorf("bad --metrics-addr %q: %w; want ADDR:PORT, e.g. 127.0.0.1:9595", f.metricsAddr, err)
		}
	}
	maxConns, err := parseMaxConns(f.maxConns)
	if err != nil {
		return err
	}
	peers, err := f.peer.config(cmd)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("bad --log-level %q", f.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := requirePrivileges(); err != nil {
		return err
	}
	if _, err := loader.ResolveIfaces(cfg.Ifaces); err != nil {
		return err
	}
	if err := loader.CheckKernel(); err != nil {
		return err
	}
	limit, err := connLimit(maxConns, len(cfg.Ifaces) > 0, log)
	if err != nil {
		return err
	}
	cfg.MaxConns = limit.budget.Capacity(limit.max)
	peerGateway, err := peers.listenGateway(tuning)
	if err != nil {
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

	// Started by an upgrade: the old daemon's sockets, not new ones.
	inherited, err := userspace.InheritedFromEnv()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	var (
		control   net.Listener
		listeners []slotListener
		metricsLn net.Listener
	)
	if inherited != nil {
		control, metricsLn = inherited.Control, inherited.Metrics
		listeners = []slotListener{{loader.ListenerV4, inherited.V4}}
		if inherited.V6 != nil {
			listeners = append(listeners, slotListener{loader.ListenerV6, inherited.V6})
		}
		if (metricsLn != nil) != (f.metricsAddr != "") {
			inherited.Close()
			return errors.New("upgrade: --metrics-addr differs from the running daemon's")
		}
	} else {
		if control, err = userspace.ListenControl(); err != nil {
			return err
		}
		if listeners, err = listen(f.listenPort, tuning, log); err != nil {
			control.Close()
			return err
		}
		// Bound before anything is attached, so that a taken port changes nothing.
		if f.metricsAddr != "" {
			if metricsLn, err = net.Listen("tcp", f.metricsAddr); err != nil {
				control.Close()
				for _, ln := range listeners {
					ln.ln.Close()
				}
				return fmt.Errorf("--metrics-addr: %w", err)
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

	att, err := attachOrOpen(cfg)
	if err != nil {
		return err
	}
	ownAttachment := att.OwnedByMe()
	defer func() {
		att.Close()
		if len(cfg.Ifaces) == 0 {
			return // serving on someone else's attachment: never ours to remove
		}
		// Asked again at exit: a `pepsal attach` since has made it persistent.
		if detached, derr := loader.DetachOwned(); derr != nil {
			err = errors.Join(err, fmt.Errorf("detach: %w", derr))
		} else if detached {
			log.Info("detached")
		}
	}()
	if cookie := firstListenerCookie(att); cookie != 0 && (inherited == nil || cookie != listenerCookie(inherited.V4)) {
		return errors.New("another pepsal daemon is serving this attachment")
	}
	// After a successful upgrade the attachment and its sysctls are the new
	// daemon's: this one leaves them alone when it exits.
	var handedOver atomic.Bool
	if tuning.FastOpen.Accept {
		old, changed, err := userspace.EnableServerFastOpen()
		if err != nil {
			return err
		}
		if changed {
			var oldV int
			fmt.Sscan(old, &oldV)
			if err := att.RecordFastOpenRestore(oldV); err != nil {
				return err
			}
			if !ownAttachment { // a detach would restore it; without one, the daemon does
				defer func() {
					if !handedOver.Load() {
						userspace.WriteSysctl("net/ipv4/tcp_fastopen", old)
					}
				}()
			}
		}
	}

	// A full flag left by a daemon killed at its limit must not outlive it.
	if err := att.SetFull(false); err != nil {
		return err
	}
	var tcpListeners []*net.TCPListener
	var addrs []string
	for _, l := range listeners {
		ln := l.ln
		// The accept queue the fd budget counts on (listen again only sets it).
		if err := userspace.ListenerFD(ln, func(fd int) error { return unix.Listen(fd, limit.budget.Backlog) }); err != nil {
			return fmt.Errorf("set listener backlog: %w", err)
		}
		if err := userspace.ListenerFD(ln, func(fd int) error { return att.RegisterListener(l.slot, fd) }); err != nil {
			return err
		}
		tcpListeners = append(tcpListeners, ln)
		addrs = append(addrs, ln.Addr().String())
	}

	splitter := userspace.NewSplitter(tcpListeners, f.connectTimeout, log)
	splitter.Tuning = tuning
	splitter.Diverted = att
	splitter.Transparent = f.transparent
	tuner := att.Tuner()
	if tuner != nil {
		defer tuner.Close()
		splitter.Tuner = tuner
		if err := tuner.SetLegs(
			loader.LegTuning{InitCwnd: tuning.Client.InitCwnd, InitRwnd: tuning.Client.InitRwnd},
			loader.LegTuning{InitCwnd: tuning.Server.InitCwnd, InitRwnd: tuning.Server.InitRwnd},
		); err != nil {
			return err
		}
	} else if tuning.Client.InitCwnd+tuning.Client.InitRwnd+tuning.Server.InitCwnd+tuning.Server.InitRwnd > 0 {
		return errors.New("initial windows need the sock_ops program, which needs a cgroup v2 hierarchy: none is mounted")
	}
	userspace.SetPipeLimit(userspace.PipeLimit(limit.max))
	setFull := func(full bool) error {
		if handedOver.Load() {
			return nil // the new daemon counts from now on
		}
		return att.SetFull(full)
	}
	admission := userspace.NewAdmission(limit.max, setFull, log)
	admission.FDLimit = limit.budget.Limit
	splitter.Table.SetAdmission(admission)
	peerCtx, stopPeers := context.WithCancel(context.Background())
	defer stopPeers()
	if err := peers.start(peerCtx, splitter, tuner, peerGateway, log); err != nil {
		return err
	}
	if f.relay == "sockmap" {
		splitter.Kernel = &userspace.KernelRelay{Log: log, Maps: att.Relay(), Budget: budget}
	}
	start := time.Now()
	info := func() userspace.DaemonInfo {
		return userspace.DaemonInfo{
			PID: os.Getpid(), Version: version, Relay: f.relay, Listeners: addrs,
			ConnectTimeout: f.connectTimeout.String(), UptimeSeconds: time.Since(start).Seconds(),
			Stats: splitter.Table.Stats(), Peer: peerStats(splitter),
		}
	}
	go userspace.ServeControl(control, info, splitter.Table, log)
	stopMetrics := func() {}
	if metricsLn != nil {
		stop, err := serveMetrics(metricsLn, splitter.Table, att, log)
		if err != nil {
			return err
		}
		stopMetrics = sync.OnceFunc(stop) // at an upgrade, or before the maps close
		defer stopMetrics()
	}

	ifaces, _ := att.Ifaces()
	names := make([]string, 0, len(ifaces))
	for _, i := range ifaces {
		names = append(names, i.Name)
	}
	log.Info("serving", "ifaces", strings.Join(names, ","), "relay", f.relay, "listeners", strings.Join(addrs, ","), "pin_dir", att.Dir,
		"max_conns", limit.max, "low_water", admission.Low, "max_conns_from", limit.from, "fd_limit", limit.budget.Limit)

	if inherited != nil {
		if err := att.TakeOver(inherited.ParentPID); err != nil {
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
	// for up to --upgrade-drain).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
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
				h := userspace.Handed{Control: control, V4: listeners[0].ln, Metrics: metricsLn}
				if len(listeners) > 1 {
					h.V6 = listeners[1].ln
				}
				pid, err := userspace.StartSuccessor(exe, os.Args[1:], h, 30*time.Second)
				if err != nil {
					log.Error("upgrade failed: still serving", "binary", exe, "err", err)
					notify(log, "READY=1")
					continue
				}
				handedOver.Store(true)
				control.Close() // `pepsal status` now reaches the new daemon
				stopMetrics()   // and so do scrapes
				log.Info("upgraded: the new daemon serves; relaying the live connections", "new_pid", pid, "live", splitter.Table.Len(), "upgrade_drain", f.upgradeDrain)
				stopServing()
				time.AfterFunc(f.upgradeDrain, cancelDrain)
				continue
			}
			if serveCtx.Err() == nil {
				log.Info("stopping: no new connections", "live", splitter.Table.Len(), "drain_timeout", f.drainTimeout)
				stopServing()
				time.AfterFunc(f.drainTimeout, cancelDrain)
				continue
			}
			// A second signal, or SIGTERM while draining after an upgrade.
			log.Info("resetting live connections", "live", splitter.Table.Len())
			cancelDrain()
			return
		}
	}()
	splitter.Serve(serveCtx, drainCtx)
	return nil
}

// notify tells systemd (Type=notify) how the daemon stands.
func notify(log *slog.Logger, state string) {
	if err := userspace.Notify(state); err != nil {
		log.Warn("systemd notify", "err", err)
	}
}

// listenerCookie is the socket cookie of a listener, 0 if unknown.
func listenerCookie(ln *net.TCPListener) uint64 {
	cookie, _ := userspace.SocketCookie(ln)
	return cookie
}

type slotListener struct {
	slot uint32
	ln   *net.TCPListener
}

// listen opens the IPv4 and IPv6 listeners on loopback addresses, where no
// remote host can reach them directly. IPv6 is skipped on a host without it.
func listen(port int, tuning userspace.Tuning, log *slog.Logger) ([]slotListener, error) {
	ln4, err := userspace.Listen(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), tuning)
	if err != nil {
		return nil, err
	}
	out := []slotListener{{loader.ListenerV4, ln4}}
	ln6, err := userspace.Listen(net.JoinHostPort("::1", strconv.Itoa(port)), tuning)
	if err != nil {
		if strings.Contains(err.Error(), "in use") {
			ln4.Close()
			return nil, err
		}
		log.Warn("no IPv6 listener: IPv6 connections will be forwarded unsplit", "err", err)
		return out, nil
	}
	return append(out, slotListener{loader.ListenerV6, ln6}), nil
}

// attachOrOpen serves on the existing attachment (no --iface) or attaches as
// a daemon, which owns what it creates and what a dead daemon left.
func attachOrOpen(cfg loader.Config) (*loader.Attachment, error) {
	if len(cfg.Ifaces) == 0 {
		att, err := loader.Open()
		var foreign *loader.ForeignPinsError
		if errors.As(err, &foreign) {
			return nil, fmt.Errorf("nothing is attached in this network namespace (%s): give --iface or run `pepsal attach` first", foreign.Reason)
		}
		if errors.Is(err, loader.ErrNotAttached) {
			return nil, errors.New("nothing is attached in this network namespace: give --iface or run `pepsal attach` first")
		}
		return att, err
	}
	cfg.Daemon = true
	return loader.Attach(cfg)
}

func firstListenerCookie(att *loader.Attachment) uint64 {
	if c := att.ListenerCookie(loader.ListenerV4); c != 0 {
		return c
	}
	return att.ListenerCookie(loader.ListenerV6)
}

// parseSize reads a byte count: 65536, 64KiB, 4MiB, 1GiB (K, M, G are binary too).
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, err
	}
	return n * mult, nil
}

// otherIfaces lists the interfaces, but loopback and the given ones: where
// replies to transparent upstream connections may come back.
func otherIfaces(except []string) ([]string, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []string
	for _, ifc := range all {
		if ifc.Flags&net.FlagLoopback == 0 && !slices.Contains(except, ifc.Name) {
			out = append(out, ifc.Name)
		}
	}
	return out, nil
}

// checkHostPort accepts HOST:PORT with a numeric port; HOST may be empty
// (every address).
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	return nil
}

// serveMetrics serves Prometheus metrics on ln until the returned stop.
func serveMetrics(ln net.Listener, table *userspace.Table, att *loader.Attachment, log *slog.Logger) (stop func(), err error) {
	m := userspace.NewMetrics(table, att.Counters)
	handler, err := m.Handler(log)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	userspace.ObserveConnects(m.ObserveConnect)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		userspace.ObserveConnects(nil)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close() // a scrape still running: cut it, the maps are about to close
		}
		<-done
	}, nil
}

func registerMaxConns(fl *pflag.FlagSet, v *string) {
	fl.StringVar(v, "max-conns", "auto", "split connections held at most; past it new connections are forwarded unsplit until 10% below (auto: what the fd limit and half the memory hold)")
}

// parseMaxConns reads --max-conns: a positive count, or 0 for "auto".
func parseMaxConns(s string) (int, error) {
	if s == "auto" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > loader.MaxMapConns {
		return 0, fmt.Errorf("bad --max-conns %q: want a count of connections from 1 to %d, or auto", s, loader.MaxMapConns)
	}
	return n, nil
}

// connLimitResult is the admission limit and the fd budget it fits in.
type connLimitResult struct {
	max    int
	from   string // what set it: flag, fd limit, memory, attachment
	budget userspace.FDBudget
}

// connLimit raises RLIMIT_NOFILE and settles the connection limit: asked
// (asked > 0), it must fit the fd limit and the existing attachment's maps;
// derived, it is the most that the fd limit, memory and those maps hold.
// newMaps: the attachment may be created by this process (sized as needed).
func connLimit(asked int, newMaps bool, log *slog.Logger) (connLimitResult, error) {
	budget, err := userspace.NewFDBudget(2)
	if err != nil {
		return connLimitResult{}, err
	}
	queued := budget.Capacity(0)
	r := connLimitResult{max: asked, from: "--max-conns", budget: budget}
	if asked > 0 {
		if need := budget.Need(asked); need > budget.Limit {
			return r, fmt.Errorf("--max-conns %d needs %d file descriptors (2 per connection and per queued accept, %d for splice pipes, %d open or reserved) but RLIMIT_NOFILE is %d: lower --max-conns to %d or raise the limit (systemd LimitNOFILE=)",
				asked, need, 2*userspace.PipeLimit(asked), need-uint64(2*(asked+queued)+2*userspace.PipeLimit(asked)), budget.Limit, budget.MaxConns())
		}
	} else {
		r.max, r.from = budget.MaxConns(), "fd limit"
		if m := userspace.MemMaxConns(); m > 0 && m < r.max {
			r.max, r.from = m, "memory"
		}
		if r.max > loader.MaxMapConns-queued {
			r.max, r.from = loader.MaxMapConns-queued, "map limit"
		}
		if r.max < 1 {
			return r, fmt.Errorf("RLIMIT_NOFILE %d holds no connection (a daemon needs %d fds for its first): raise it", budget.Limit, budget.Need(1))
		}
	}
	capacity, attached, err := loader.ExistingCapacity()
	if err != nil || !attached {
		if !newMaps && err == nil {
			return r, nil // run without --iface and nothing attached: it fails later, clearly
		}
		return r, err
	}
	if capacity >= budget.Capacity(r.max) {
		return r, nil
	}
	if asked > 0 {
		return r, fmt.Errorf("--max-conns %d: the existing attachment's maps hold %d connections (including %d in accept queues): `pepsal detach` and attach again with --max-conns, or lower it",
			asked, capacity, queued)
	}
	r.max, r.from = capacity-queued, "attachment's maps"
	if r.max < 1 {
		return r, fmt.Errorf("the existing attachment's maps hold %d connections, no more than the accept queues (%d): `pepsal detach` and attach again", capacity, queued)
	}
	log.Info("connection limit lowered to what the existing attachment's maps hold", "max_conns", r.max)
	return r, nil
}
