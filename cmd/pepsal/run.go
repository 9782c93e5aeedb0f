package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
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
	policy         policyFlags
	tuning         tuningFlags
	peer           peerFlags
	relay          string
	relayBudget    string
	offloadAfter   string
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
	fl.StringVar(&f.offloadAfter, "offload-after", "64KiB", "sockmap relay: bytes a connection moves (both ways) by splice before its sockets go into the kernel relay; short and idle connections never pay for it (0: at once)")
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

func run(cmd *cobra.Command, f *runFlags) error {
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
	offloadAfter, err := parseSize(f.offloadAfter)
	if err != nil || offloadAfter > 1<<40 {
		return fmt.Errorf("bad --offload-after %q: want a size, e.g. 64KiB, or 0", f.offloadAfter)
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

	d, err := daemon.NewDaemon(daemon.Options{
		Tuning:         tuning,
		Relay:          f.relay,
		RelayBudget:    budget,
		OffloadAfter:   int64(offloadAfter),
		ListenPort:     f.listenPort,
		ConnectTimeout: f.connectTimeout,
		DrainTimeout:   f.drainTimeout,
		UpgradeDrain:   f.upgradeDrain,
		Transparent:    f.transparent,
		MetricsAddr:    f.metricsAddr,
		MaxConns:       limit.max,
		MaxConnsFrom:   limit.from,
		FDBudget:       limit.budget,
		Peer:           peers,
		Version:        version,
		Args:           os.Args[1:],
		Log:            log,
		Attach:         func() (*daemon.Kernel, error) { return attachOrOpen(cfg, log) },
	})
	if err != nil {
		return err
	}
	return flagErr(d.Run(cmd.Context()))
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
	if t := att.Tuner(); t != nil { // a nil *loader.Tuner must stay a nil interface
		k.Tuner = t
	}
	k.Close = func() error {
		att.Close()
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
	budget proxy.FDBudget
}

// connLimit raises RLIMIT_NOFILE and settles the connection limit: asked
// (asked > 0), it must fit the fd limit and the existing attachment's maps;
// derived, it is the most that the fd limit, memory and those maps hold.
// newMaps: the attachment may be created by this process (sized as needed).
func connLimit(asked int, newMaps bool, log *slog.Logger) (connLimitResult, error) {
	budget, err := proxy.NewFDBudget(2)
	if err != nil {
		return connLimitResult{}, err
	}
	queued := budget.Capacity(0)
	r := connLimitResult{max: asked, from: "--max-conns", budget: budget}
	if asked > 0 {
		if need := budget.Need(asked); need > budget.Limit {
			return r, fmt.Errorf("--max-conns %d needs %d file descriptors (2 per connection and per queued accept, %d for splice pipes, %d open or reserved) but RLIMIT_NOFILE is %d: lower --max-conns to %d or raise the limit (systemd LimitNOFILE=)",
				asked, need, 2*relay.PipeLimit(asked), need-uint64(2*(asked+queued)+2*relay.PipeLimit(asked)), budget.Limit, budget.MaxConns())
		}
	} else {
		r.max, r.from = budget.MaxConns(), "fd limit"
		if m := proxy.MemMaxConns(); m > 0 && m < r.max {
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
