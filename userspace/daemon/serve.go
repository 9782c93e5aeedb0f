// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
)

// observe serves the control socket (`pepsal status`) and the metrics.
func (r *run) observe() error {
	r.start = time.Now()
	control := &ControlServer{Info: r.info, Table: r.pipeline.Table, Group: r.o.ControlGroup, Log: r.log}
	go control.Serve(r.control)
	if r.metricsLn == nil {
		return nil
	}
	listen := func() report.ListenStats { return listenStats(r.backlog) }
	ops := metricsOps{Version: r.o.Version, Ifaces: r.follow.health, Health: r.health(), RTO: func() *report.RTOBound { return rtoBound(r.o.Tuning) },
		Outages: r.outageStats}
	stop, err := serveMetrics(r.metricsLn, r.pipeline, r.peerStats, r.k.Counters, listen, ops, r.log)
	if err != nil {
		return err
	}
	r.stopMetrics = sync.OnceFunc(stop) // at an upgrade, or before the maps close
	r.atEnd(r.stopMetrics)
	return nil
}

// info is the daemon's part of `pepsal status`.
func (r *run) info() report.DaemonInfo {
	o, p := r.o, r.pipeline
	info := report.DaemonInfo{
		PID: os.Getpid(), Version: o.Version, Relay: r.relay, RelayAsked: o.Relay.String(), Off: r.off, Listeners: r.addrs,
		ConnectTimeout: o.ConnectTimeout.String(), UptimeSeconds: time.Since(r.start).Seconds(),
		Stats: p.Table.Stats(), Peer: r.peerStats(), SplitStats: p.SplitStats(), Listen: listenStats(r.backlog),
		Interfaces: r.follow.health(),
	}
	info.Role, info.Presets, info.Deny = o.Role, Presets(o.Tuning), prefixTexts(o.Deny)
	info.RTOBound = rtoBound(o.Tuning)
	info.Outages = r.outageStats()
	if o.ForwardFilter.Mode != "" {
		ff := o.ForwardFilter
		info.ForwardFilter = &ff
	}
	return info
}

// announce says that the daemon serves: in the log, to systemd, and after
// an upgrade to the old daemon, once this one owns the attachment.
func (r *run) announce() error {
	o, log := r.o, r.log
	names := make([]string, 0, len(r.ifaces))
	for _, i := range r.ifaces {
		names = append(names, i.Name)
	}
	log.Info("serving", "ifaces", strings.Join(names, ","), "relay", r.relay, "listeners", strings.Join(r.addrs, ","), "pin_dir", r.k.PinDir,
		"max_conns", o.MaxConns, "low_water", r.admission.Low, "max_conns_from", o.MaxConnsFrom, "fd_limit", o.FDBudget.Limit, "max_conns_per_client", o.MaxConnsPerClient)
	log.Info("presets in force", "role", o.Role, "legs", strings.Join(Presets(o.Tuning), "; "))
	if b := o.FDBudget; b.TightFDs {
		log.Warn("the fd limit is tight: accept queues and splice pipes shortened to fit it; raise it (systemd LimitNOFILE=, prlimit --nofile) for more connections",
			"fd_limit", b.Limit, "max_conns", o.MaxConns, "backlog", b.Backlog, "splice_pipes", relay.PipeLimit(o.MaxConns))
	}

	in := r.inherited
	if in == nil {
		notify(log, "READY=1")
		return nil
	}
	if err := r.k.TakeOver(in.ParentPID); err != nil {
		return err
	}
	if err := in.Ready(); err != nil {
		return fmt.Errorf("upgrade: tell the old daemon: %w", err)
	}
	r.ownsControl = true // the old daemon leaves it to this one now
	log.Info("upgraded: serving in place of the old daemon", "old_pid", in.ParentPID)
	notify(log, fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
	return nil
}

// serving is what stops a daemon's serving, in two steps: accepting
// (stop, then ctx is done), then relaying what is left (cancelDrain
// resets the live connections).
type serving struct {
	ctx         context.Context
	stop        context.CancelFunc
	cancelDrain context.CancelFunc
}

// serve runs the pipeline until the signals say it is over.
func (r *run) serve(ctx context.Context) {
	// Stop accepting on SIGTERM/SIGINT (drain, then reset), or once a new
	// daemon took the sockets over after SIGHUP (relay the live connections
	// for up to UpgradeDrain).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	// A terminal that no longer accepts flows has no use for its warm
	// connections: let the gateway have them back now, not when the last
	// live connection of a drain (up to --upgrade-drain) ends.
	context.AfterFunc(serveCtx, r.stopPeers)
	// Nor are its interfaces its to follow: a drain ends in a detach, an
	// upgrade's new daemon follows them.
	context.AfterFunc(serveCtx, r.stopFollowing)
	drainCtx, cancelDrain := context.WithCancel(context.Background())
	defer cancelDrain()
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)
	go r.handleSignals(ctx, signals, serving{serveCtx, stopServing, cancelDrain})
	r.pipeline.Serve(serveCtx, drainCtx)
}

// handleSignals stops the daemon: SIGTERM or SIGINT (or ctx done) stops
// accepting and drains for up to DrainTimeout, a second one resets what is
// left; SIGHUP hands the sockets over to the binary now on disk.
func (r *run) handleSignals(ctx context.Context, signals <-chan os.Signal, s serving) {
	for {
		var sig os.Signal
		select {
		case sig = <-signals:
		case <-ctx.Done():
			sig = syscall.SIGTERM
		}
		if sig == syscall.SIGHUP {
			if !r.handedOver.Load() {
				r.upgrade(s)
			}
			continue
		}
		if s.ctx.Err() == nil {
			r.stopping.Store(true)
			r.log.Info("stopping: no new connections", "live", r.pipeline.Table.Len(), "drain_timeout", r.o.DrainTimeout)
			s.stop()
			time.AfterFunc(r.o.DrainTimeout, s.cancelDrain)
			continue
		}
		// A second signal, or SIGTERM while draining after an upgrade.
		r.log.Info("resetting live connections", "live", r.pipeline.Table.Len())
		s.cancelDrain()
		return
	}
}

// upgrade hands the sockets to a new daemon started from the binary now on
// disk. Once it serves, this one stops accepting and relays its live
// connections for up to UpgradeDrain; if it fails, this one serves on.
func (r *run) upgrade(s serving) {
	log := r.log
	notify(log, "RELOADING=1")
	h := Handed{Control: r.control, V4: r.listeners[0].ln, Metrics: r.metricsLn}
	if len(r.listeners) > 1 {
		h.V6 = r.listeners[1].ln
	}
	if r.gateway != nil {
		h.Peer = r.gateway.Listener()
	}
	pid, err := StartSuccessor(r.exe, r.o.Args, h, 30*time.Second)
	if err != nil {
		log.Error("upgrade failed: still serving", "binary", r.exe, "err", err)
		notify(log, "READY=1")
		return
	}
	r.handedOver.Store(true)
	if r.gateway != nil {
		r.gateway.HandedOver() // its waiting warm connections stay until used
	}
	r.control.Close() // `pepsal status` now reaches the new daemon
	r.stopMetrics()   // and so do scrapes
	log.Info("upgraded: the new daemon serves; relaying the live connections", "new_pid", pid, "live", r.pipeline.Table.Len(), "upgrade_drain", r.o.UpgradeDrain)
	s.stop()
	time.AfterFunc(r.o.UpgradeDrain, s.cancelDrain)
}

// notify tells systemd (Type=notify) how the daemon stands.
func notify(log *slog.Logger, state string) {
	if err := Notify(state); err != nil {
		log.Warn("systemd notify", "err", err)
	}
}
