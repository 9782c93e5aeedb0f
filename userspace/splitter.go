// Package userspace is pepsal's proxy: it accepts the connections that the BPF
// side steers to its listener, dials the original destination, and relays.
package userspace

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

// Splitter accepts diverted connections and splits them.
type Splitter struct {
	Relay relay.Relay // moves the bytes: Splice (NewSplitter's), or a kernel relay over it
	// Upstream reaches the servers of the proxy listeners' flows:
	// NewSplitter's is FastOpen over Direct. Set before Serve.
	Upstream Upstream
	Dialer   *Dialer // dials every server leg
	Table    *Table
	Log      *slog.Logger
	// OnExhausted, if set, is called each time accept or an upstream dial
	// fails for want of a local resource (fds, memory, ports).
	OnExhausted func()
	// Splice is the splice relay, its pipes and idle waiter (NewSplitter
	// makes them; Close closes the waiter): a kernel relay falls back to it.
	Splice relay.Splice

	tuning    tuning.Tuning
	diverted  DivertedSYNs // the SYN's record, read and deleted after accept; nil: none
	listeners []*net.TCPListener
	own       map[netip.AddrPort]bool // the listeners' own addresses: never a destination
	sides     []acceptSide            // accept sides besides the proxy listeners (Accept)
	wg        sync.WaitGroup

	localLog    logx.RateLog
	localFailed atomic.Uint64 // connections reset for want of a local resource (conn.LocalFailed)
}

// Config is what a splitter is made with.
type Config struct {
	ConnectTimeout time.Duration
	Tuning         tuning.Tuning
	Transparent    bool          // dial from the client's address and port
	Diverted       DivertedSYNs  // the SYN's record, read and deleted after accept; nil: none
	Tuner          UpstreamTuner // nil: no sock_ops (initial windows untouched)
	Log            *slog.Logger
}

// NewSplitter prepares a splitter serving the given listeners.
func NewSplitter(listeners []*net.TCPListener, cfg Config) *Splitter {
	log := cfg.Log
	d := &Dialer{Timeout: cfg.ConnectTimeout, Server: cfg.Tuning.Server, Tuner: cfg.Tuner, Transparent: cfg.Transparent, Log: log,
		tuneLog: logx.RateLog{Period: 5 * time.Second}}
	s := &Splitter{Upstream: FastOpen{Direct{d}}, Dialer: d, Table: NewTable(), Log: log, tuning: cfg.Tuning, diverted: cfg.Diverted,
		listeners: listeners, own: map[netip.AddrPort]bool{}, localLog: logx.RateLog{Period: 5 * time.Second}}
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

// SplitStats reads the splitter's totals that its table does not keep.
func (s *Splitter) SplitStats() report.SplitStats {
	return report.SplitStats{LocalFailed: s.localFailed.Load(), UpstreamTuningSkipped: s.Dialer.TuningSkipped()}
}
