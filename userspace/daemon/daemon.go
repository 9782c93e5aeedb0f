// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/outage"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// Errors of the daemon, for callers to tell apart with errors.Is.
var (
	ErrOtherDaemon = errors.New("another pepsal daemon is serving this attachment")
	ErrNoSockOps   = errors.New("initial windows need the sock_ops program, which needs a cgroup v2 hierarchy: none is mounted")
	// ErrUpgradeMetrics: an upgrade's metrics address must be the running
	// daemon's (its listener is handed over, not opened again).
	ErrUpgradeMetrics = errors.New("upgrade: the metrics listener differs from the running daemon's")
)

// PeerOptions configure warm paths: a gateway listens for terminals, a
// terminal keeps a pool of connections to its gateway.
type PeerOptions struct {
	Listen  string         // gateway: ADDR:PORT; "": not a gateway
	Allow   []netip.Prefix // gateway: accepted sources; empty: any
	Gateway string         // terminal: the gateway's ADDR:PORT; "": not a terminal
	Pool    int            // terminal: idle warm connections kept
	Keys    *peer.Keys     // gateway: the terminals' keys; terminal: its own (Keys.Own)
	KeyFile string         // where Keys came from: a gateway reads it again when it changes
	// OutageProbe: how often the other pepsal is pinged while legs toward
	// it are stalled, to catch the link's return (0: off).
	OutageProbe time.Duration
}

// Options are a daemon's settings, checked by the caller (the CLI names its
// flags in its errors; the daemon does not know them).
type Options struct {
	Tuning         tuning.Tuning
	Role           string // --role ("": none), for status
	Relay          relay.Mode
	RelayBudget    uint64 // sockmap: bytes redirected toward a socket and not yet in its send queue
	OffloadAfter   int64  // sockmap: bytes a connection moves by splice before it goes into the kernel (0: at once)
	ListenPort     int    // the proxy's listeners, on 127.0.0.1 and ::1
	ConnectTimeout time.Duration
	DrainTimeout   time.Duration // on SIGTERM/SIGINT, before live connections are reset
	UpgradeDrain   time.Duration // on SIGHUP, how long the old daemon relays its live connections
	Transparent    bool
	Deny           []netip.Prefix       // destinations refused besides this host's own (--deny)
	ServerMark     uint32               // SO_MARK of server legs (0: none)
	ForwardFilter  report.ForwardFilter // --forward-filter and what it found (status)
	MetricsAddr    string               // "": no metrics
	ControlGroup   ControlGroup         // who besides root may use the control socket
	MaxConns       int                  // the admission limit
	MaxConnsFrom   string               // what set it (logged)
	// MaxConnsPerClient limits the connections of one client address
	// (0: none); past it its new connections are forwarded unsplit.
	MaxConnsPerClient int
	FDBudget          proxy.FDBudget
	Peer              PeerOptions
	Version           string
	Args              []string // the successor's arguments at an upgrade
	Log               *slog.Logger
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
	if opts.Attach == nil {
		return nil, errors.New("no attachment")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Daemon{opts: opts, log: opts.Log}, nil
}

// run is what one Run sets up, phase by phase, for the phases after it
// and for end.
type run struct {
	o   *Options
	log *slog.Logger

	// Sockets (openSockets).
	inherited *Inherited // the old daemon's sockets after an upgrade; nil: fresh ones
	exe       string     // the binary to start on SIGHUP
	control   net.Listener
	place     report.Control // where control serves
	// ownsControl: this daemon made the control socket or, started by an
	// upgrade, serves on it (announce); it removes it at its end unless it
	// handed it over.
	ownsControl bool
	listeners   []slotListener
	metricsLn   net.Listener  // nil: no metrics
	gateway     *peer.Gateway // nil: not a gateway

	// Kernel side (attachKernel, settleRelay).
	k       *Kernel
	addrs   []string // the proxy listeners' addresses
	backlog int      // the proxy listeners' backlog (registerListeners)
	ifaces  []loader.Iface
	relay   string       // the relay in use
	off     []report.Off // what this host lacks, and what is done instead
	rtoOff  []report.Off // of them, buildPipeline's: the retransmission bound, the outage watch

	// Interfaces followed by name (followIfaces); follow is nil without.
	follow        *follower
	stopFollowing func()

	// Pipeline (buildPipeline).
	pipeline  *proxy.Pipeline
	admission *proxy.Admission
	pool      *peer.Pool      // nil: not a terminal
	outages   *outage.Watcher // nil: no outage watch
	stopPeers context.CancelFunc

	// Observers (observe).
	start       time.Time // of the uptime
	stopMetrics func()    // at an upgrade, or before the maps close

	// handedOver: after a successful upgrade the attachment and its
	// sysctls are the new daemon's; this one leaves them alone.
	handedOver atomic.Bool
	stopping   atomic.Bool // a signal stopped the accepting (/healthz)
	undo       []func()    // what end undoes, last first
	closeErr   error       // what closing the kernel side said
}

// Run serves until ctx is done or a signal stops it (SIGTERM/SIGINT: drain,
// then reset; SIGHUP: hand over to the binary now on disk).
func (d *Daemon) Run(ctx context.Context) (err error) {
	r := &run{o: &d.opts, log: d.log, stopMetrics: func() {}}
	defer func() {
		if cerr := r.end(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	for _, phase := range []func() error{r.openSockets, r.attachKernel, r.buildPipeline, r.settleRelay, r.followIfaces, r.observe, r.announce} {
		if err := phase(); err != nil {
			return err
		}
	}
	r.serve(ctx)
	return nil
}

// atEnd has end undo f, before what was set up earlier (as a defer in Run
// would).
func (r *run) atEnd(f func()) { r.undo = append(r.undo, f) }

// end undoes what the phases set up, last first, and returns the error of
// closing the kernel side (Kernel.Close), if any.
func (r *run) end() error {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	return r.closeErr
}
