// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// Pipeline splits connections: each accept side (the proxy listeners, and
// those Accept adds) hands it flows, which it sets up one way (setup.go),
// connects to their servers through an Upstream and hands to its Relay.
type Pipeline struct {
	Relay relay.Relay // moves the bytes: Splice (NewPipeline's), or a kernel relay over it
	// Upstream reaches the servers of the proxy listeners' flows:
	// NewPipeline's is FastOpen over Direct. Set before Serve.
	Upstream Upstream
	Dialer   *Dialer // dials every server leg
	Table    *Table
	Log      *slog.Logger
	// OnExhausted, if set, is called each time accept or an upstream dial
	// fails for want of a local resource (fds, memory, ports).
	OnExhausted func()
	// Splice is the splice relay, its pipes and idle waiter (NewPipeline
	// makes them; Close closes the waiter): a kernel relay falls back to it.
	Splice relay.Splice

	tuning    tuning.Tuning
	diverted  DivertedSYNs // the SYN's record, read and deleted after accept; nil: none
	listeners []*net.TCPListener
	own       map[netip.AddrPort]bool // the listeners' own addresses: never a destination
	dest      DestPolicy              // the destinations pepsal may connect to
	sides     []acceptSide            // accept sides besides the proxy listeners (Accept)
	wg        sync.WaitGroup

	localLog    logx.RateLog
	localFailed atomic.Uint64 // connections reset for want of a local resource (conn.LocalFailed)
	denyLog     logx.RateLog  // refused destinations: a scan must not become a storm of lines
}

// Config is what a pipeline is made with.
type Config struct {
	ConnectTimeout time.Duration
	Tuning         tuning.Tuning
	Transparent    bool          // dial from the client's address and port
	Mark           uint32        // SO_MARK of server legs (0: none)
	Diverted       DivertedSYNs  // the SYN's record, read and deleted after accept; nil: none
	Tuner          UpstreamTuner // nil: no sock_ops (initial windows untouched)
	// Dest is the destinations a flow may not reach (NewDestPolicy); the
	// zero value refuses only what an address alone says (loopback,
	// link-local, ...): without its route lookup this host's own
	// addresses are not known.
	Dest DestPolicy
	Log  *slog.Logger
}

// NewPipeline prepares a pipeline serving the given proxy listeners.
func NewPipeline(listeners []*net.TCPListener, cfg Config) *Pipeline {
	log := cfg.Log
	d := &Dialer{Timeout: cfg.ConnectTimeout, Server: cfg.Tuning.Server, Tuner: cfg.Tuner, ByRTT: cfg.Tuning.ByRTT.On(), Transparent: cfg.Transparent, Mark: cfg.Mark, Log: log,
		tuneLog: logx.RateLog{Period: 5 * time.Second}}
	p := &Pipeline{Upstream: FastOpen{Direct{Dialer: d}}, Dialer: d, Table: NewTable(), Log: log, tuning: cfg.Tuning, diverted: cfg.Diverted,
		listeners: listeners, own: map[netip.AddrPort]bool{}, dest: cfg.Dest,
		localLog: logx.RateLog{Period: 5 * time.Second}, denyLog: logx.RateLog{Period: 5 * time.Second}}
	for _, ln := range listeners {
		p.own[sockopt.AddrPort(ln.Addr())] = true
	}
	// The idle waiter's epoll fd is the daemon's for good: open it now, not
	// with the first connection (a leak check takes its baseline after start).
	waiter, _ := relay.NewIdleWaiter(log) // nil: each direction parks a goroutine instead
	p.Splice = relay.Splice{Pipes: &relay.Pipes{}, Waiter: waiter}
	p.Relay = p.Splice
	return p
}

// Close releases what NewPipeline opened (the idle waiter), once no
// connection is relayed any more: after Serve, or instead of it.
func (p *Pipeline) Close() error {
	if p.Splice.Waiter == nil {
		return nil
	}
	return p.Splice.Waiter.Close()
}

// SetPipeLimit bounds the splice pipes open at once (PipeLimit of the
// admission limit), so that pipes never take the fds accept and dial need.
func (p *Pipeline) SetPipeLimit(n int) { p.Splice.Pipes.SetLimit(n) }

// SplitStats reads the pipeline's totals that its table does not keep.
func (p *Pipeline) SplitStats() report.SplitStats {
	return report.SplitStats{LocalFailed: p.localFailed.Load(), UpstreamTuningSkipped: p.Dialer.TuningSkipped()}
}
