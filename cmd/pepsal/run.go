// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/user"
	"slices"
	"strconv"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/daemon"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

type runFlags struct {
	config         string
	policy         policyFlags
	tuning         tuningFlags
	peer           peerFlags
	relay          relayFlags
	forward        forwardFlags
	listenPort     int
	connectTimeout time.Duration
	drainTimeout   time.Duration
	upgradeDrain   time.Duration
	logLevel       string
	logFormat      string
	transparent    bool
	ifaceWait      bool
	deny           []string
	metricsAddr    string
	maxConns       string
	perClient      string
	controlGroup   string
}

func runCmd(e *env) *cobra.Command { return runCmdInto(e, &runFlags{}) }

// runCmdInto is the run command, its flags parsed into f.
func runCmdInto(e *env, f *runFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Attach to the given interfaces (or use the existing attachment) and split connections until stopped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, e, f)
		},
	}
	f.policy.register(cmd)
	f.tuning.register(cmd)
	f.peer.register(cmd)
	fl := cmd.Flags()
	f.relay.register(fl)
	f.forward.register(fl, true)
	fl.IntVar(&f.listenPort, "listen-port", 5000, "port of the proxy's listeners on 127.0.0.1 and ::1")
	fl.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "give up on the upstream connection (and reset the client) after this long")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 5*time.Second, "on SIGTERM/SIGINT, wait this long for live connections before resetting them")
	fl.DurationVar(&f.upgradeDrain, "upgrade-drain", time.Hour, "on SIGHUP (upgrade), the old daemon relays its live connections for at most this long, then resets what is left")
	fl.BoolVar(&f.ifaceWait, "iface-wait", false, "an --iface (or --return-iface) that does not exist yet is waited for, not refused: the classifier goes on it when it appears (every interface is followed by name anyway: one deleted and created again is re-attached)")
	fl.BoolVar(&f.transparent, "transparent", false, "dial servers from the client's own address and port, so they see the real client; replies are taken on --return-iface (default: every other interface)")
	fl.StringArrayVar(&f.deny, "deny", nil, "destination prefix pepsal never connects to for a client, e.g. the operator's internal networks 10.0.0.0/8 (repeatable; this host's own addresses, loopback, link-local, multicast and broadcast are always refused)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log lines as text (key=value) or json (one object per line, for a log shipper)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR:PORT/metrics (default: off)")
	fl.StringVar(&f.controlGroup, "control-group", "", "members of group `NAME|GID` may ask the daemon (pepsal conns) besides root (default: root only)")
	registerMaxConns(fl, &f.maxConns)
	registerMaxConnsPerClient(fl, &f.perClient)
	registerConfig(cmd, &f.config)
	return cmd
}

// runPlan is what `pepsal run` is asked, checked: the attachment's policy,
// the daemon's options, and the connection limit asked (0: auto), which is
// settled against the host once it may be touched.
type runPlan struct {
	cfg       loader.Config
	opts      daemon.Options
	asked     int
	fwd       forwardPlan
	perClient int // --max-conns-per-client as parsePerClient reads it
}

func run(cmd *cobra.Command, e *env, f *runFlags) error {
	// Everything that can be checked is checked before anything is touched.
	p, err := f.plan(cmd, e)
	if err != nil {
		return usage(err)
	}
	if err := checkHost(e, p.cfg); err != nil {
		return err
	}
	if po := p.opts.Peer; (po.Listen != "" || po.Gateway != "") && po.OutageProbe > 0 && e.netRaw != nil {
		if err := e.netRaw(); err != nil {
			return err
		}
	}
	// Before anything is attached: a refusal leaves nothing behind.
	if p.opts.ForwardFilter, err = checkForward(e, p.fwd, p.opts.Log); err != nil {
		return err
	}
	p.opts.ServerMark = p.fwd.serverMark
	limit, err := settleLimit(p.asked, p.opts.Peer.Listen != "", p.opts.Log)
	if err != nil {
		return err
	}
	cfg, log := p.cfg, p.opts.Log
	cfg.MapConns = limit.MapConns()
	p.opts.MaxConns, p.opts.MaxConnsFrom, p.opts.FDBudget = limit.Max, limitFrom(limit), limit.Budget
	p.opts.MaxConnsPerClient = perClientLimit(p.perClient, limit.Max)
	p.opts.Attach = func() (*daemon.Kernel, error) { return attachOrOpen(cfg, log) }
	d, err := daemon.NewDaemon(p.opts)
	if err != nil {
		return err
	}
	return flagErr(d.Run(cmd.Context()))
}

// plan turns the flags into the daemon's options, failing on the first bad
// one with its name; it touches nothing.
func (f *runFlags) plan(cmd *cobra.Command, e *env) (runPlan, error) {
	cfg, err := f.policy.config()
	if err != nil {
		return runPlan{}, err
	}
	if f.ifaceWait && len(cfg.Ifaces) == 0 {
		return runPlan{}, errors.New("--iface-wait needs --iface: without it the daemon serves an existing attachment and follows no interface")
	}
	cfg.WaitIfaces = f.ifaceWait
	tun, err := f.tuning.tuning(cmd)
	if err != nil {
		return runPlan{}, err
	}
	if f.transparent && len(cfg.Ifaces) > 0 && len(cfg.ReturnIfaces) == 0 {
		if cfg.ReturnIfaces, err = otherIfaces(cfg.Ifaces); err != nil {
			return runPlan{}, err
		}
	}
	rs, err := f.relay.settings()
	if err != nil {
		return runPlan{}, err
	}
	fwd, err := f.forward.plan(cfg.Routing.Mark)
	if err != nil {
		return runPlan{}, err
	}
	if err := f.checkServing(); err != nil {
		return runPlan{}, err
	}
	asked, err := parseMaxConns(f.maxConns)
	if err != nil {
		return runPlan{}, err
	}
	perClient, err := parsePerClient(f.perClient)
	if err != nil {
		return runPlan{}, err
	}
	group, err := parseControlGroup(f.controlGroup)
	if err != nil {
		return runPlan{}, err
	}
	peers, err := f.peer.config(cmd)
	if err != nil {
		return runPlan{}, err
	}
	deny, err := parsePrefixes("--deny", f.deny)
	if err != nil {
		return runPlan{}, err
	}
	log, err := newLogger(f.logLevel, f.logFormat, e.stderr)
	if err != nil {
		return runPlan{}, err
	}
	if err := tun.ByRTT.Available(); err != nil {
		log.Warn("--role auto: " + err.Error())
	}
	return runPlan{cfg: cfg, asked: asked, fwd: fwd, perClient: perClient, opts: daemon.Options{
		Tuning:         tun,
		Role:           f.tuning.role,
		Relay:          rs.mode,
		RelayBudget:    rs.budget,
		OffloadAfter:   rs.offloadAfter,
		ListenPort:     f.listenPort,
		ConnectTimeout: f.connectTimeout,
		DrainTimeout:   f.drainTimeout,
		UpgradeDrain:   f.upgradeDrain,
		Transparent:    f.transparent,
		Deny:           deny,
		MetricsAddr:    f.metricsAddr,
		ControlGroup:   group,
		Peer:           peers,
		Version:        version,
		Args:           e.args,
		Log:            log,
	}}, nil
}

// checkServing checks the flags of the daemon's own sockets and clocks.
func (f *runFlags) checkServing() error {
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
	return nil
}

// parseControlGroup reads --control-group: a group's name, or a GID (which
// needs no entry in the group database).
func parseControlGroup(s string) (daemon.ControlGroup, error) {
	if s == "" {
		return daemon.ControlGroup{}, nil
	}
	if gid, err := strconv.ParseUint(s, 10, 32); err == nil {
		name := s
		if g, err := user.LookupGroupId(s); err == nil {
			name = g.Name
		}
		return daemon.ControlGroup{Name: name, GID: uint32(gid), Set: true}, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return daemon.ControlGroup{}, fmt.Errorf("bad --control-group %q: %w", s, err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return daemon.ControlGroup{}, fmt.Errorf("bad --control-group %q: GID %q: %w", s, g.Gid, err)
	}
	return daemon.ControlGroup{Name: g.Name, GID: uint32(gid), Set: true}, nil
}

// newLogger is the daemon's log on w, at --log-level, in --log-format.
func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("bad --log-format %q: want text or json", format)
}

// checkHost fails unless this process may attach, to these interfaces
// (unless told to wait for them), on this kernel: the last check before
// the host is touched.
func checkHost(e *env, cfg loader.Config) error {
	if err := e.privileged(); err != nil {
		return err
	}
	if !cfg.WaitIfaces {
		if _, err := loader.ResolveIfaces(cfg.Ifaces); err != nil {
			return err
		}
	}
	return loader.CheckKernel()
}

// relayFlags choose the relay and tune the kernel one.
type relayFlags struct {
	mode, offloadAfter, budget string
}

func (r *relayFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&r.mode, "relay", relay.ModeSplice.String(), "relay mode: splice (userspace, zero-copy) or sockmap (in-kernel)")
	fl.StringVar(&r.offloadAfter, "offload-after", "64KiB", "sockmap relay: bytes a connection moves (both ways) by splice before its sockets go into the kernel relay; short and idle connections never pay for it (0: at once)")
	fl.StringVar(&r.budget, "relay-budget", "4MiB", "sockmap relay: bytes per direction redirected toward a socket and not yet in its TCP send queue, beyond which the sender is slowed by TCP flow control")
}

// relaySettings are the relay flags, parsed.
type relaySettings struct {
	mode         relay.Mode
	budget       uint64
	offloadAfter int64
}

func (r *relayFlags) settings() (relaySettings, error) {
	var s relaySettings
	if err := s.mode.UnmarshalText([]byte(r.mode)); err != nil {
		return s, fmt.Errorf("--%w", err) // "--relay must be splice or sockmap, not ..."
	}
	offloadAfter, err := parseSize(r.offloadAfter)
	if err == nil && offloadAfter > 1<<40 {
		err = errSizeTooLarge
	}
	if err != nil {
		return s, sizeFlagErr("offload-after", r.offloadAfter, err, "want a size, e.g. 64KiB, or 0")
	}
	s.offloadAfter = int64(offloadAfter)
	s.budget, err = parseSize(r.budget)
	if err != nil || s.budget < 64<<10 {
		return s, sizeFlagErr("relay-budget", r.budget, err, "want a size of at least 64KiB, e.g. 4MiB")
	}
	return s, nil
}

// flagErr says the daemon's errors with the flag that set what failed.
func flagErr(err error) error {
	var le *proxy.ListenError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, daemon.ErrUpgradeMetrics):
		return errors.New("upgrade: --metrics-addr differs from the running daemon's")
	case errors.As(err, &le) && le.What == "metrics":
		return fmt.Errorf("--metrics-addr: %w", le.Err)
	case errors.As(err, &le) && le.What == "peer" && errors.Is(err, unix.EADDRINUSE):
		return fmt.Errorf("--peer-listen %s: address in use", le.Addr)
	case errors.As(err, &le) && le.What == "peer":
		return fmt.Errorf("--peer-listen %s: %w", le.Addr, le.Err)
	}
	return err
}

// attachOrOpen serves on the existing attachment (no --iface) or attaches as
// a daemon, which owns what it creates and what a dead daemon left; the
// daemon's Kernel.Close releases it and, with --iface, detaches what it owns.
func attachOrOpen(cfg loader.Config, log *slog.Logger) (*daemon.Kernel, error) {
	var att *loader.Attachment
	var err error
	if len(cfg.Ifaces) == 0 {
		att, err = loader.Open()
		var foreign *loader.ForeignPinsError
		if errors.As(err, &foreign) {
			return nil, fmt.Errorf("nothing is attached in this network namespace (%s): give --iface or run `pepsal attach` first", foreign.Reason)
		}
		if errors.Is(err, loader.ErrNotAttached) {
			return nil, errors.New("nothing is attached in this network namespace: give --iface or run `pepsal attach` first")
		}
	} else {
		cfg.Daemon = true
		att, err = loader.Attach(cfg)
	}
	if err != nil {
		return nil, err
	}
	k := &daemon.Kernel{Attachment: att, Relay: att.Relay(), PinDir: att.Dir}
	if len(cfg.Ifaces) > 0 { // followed by name: one created again is re-attached
		want := cfg.Wanted()
		k.Reattach = func() ([]loader.Placed, error) { return att.Reattach(want, cfg.TCMode) }
	}
	var stalls *loader.Stalls
	if t := att.Tuner(); t != nil { // a nil *loader.Tuner must stay a nil interface
		k.Tuner = t
		if stalls, err = att.Stalls(); err == nil {
			k.Stalls = stalls
		}
	}
	k.Close = func() error {
		att.Close()
		if stalls != nil {
			stalls.Close()
		}
		if len(cfg.Ifaces) == 0 {
			return nil // serving on someone else's attachment: never ours to remove
		}
		// Asked again at exit: a `pepsal attach` since has made it persistent.
		detached, err := loader.DetachOwned()
		if err != nil {
			return fmt.Errorf("detach: %w", err)
		}
		if detached {
			log.Info("detached")
		}
		return nil
	}
	return k, nil
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
