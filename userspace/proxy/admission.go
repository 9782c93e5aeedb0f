// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/loader"
	"golang.org/x/sys/unix"
)

// Admission keeps the classifier's admission flag (pepsal_admit) in step
// with the connection table: at Max live connections new SYNs are forwarded
// unsplit, until the count falls below Low (hysteresis, so that a table
// hovering at the limit does not flip the flag on every connection). The
// table calls it under its lock on every Add and Remove; the flag is written
// only when it changes.
type Admission struct {
	Max, Low int
	FDLimit  uint64                // RLIMIT_NOFILE the limit was checked against, for status
	set      func(full bool) error // loader.Attachment.SetFull
	log      *slog.Logger

	// Guarded by the table's lock.
	full    bool
	ceiling int         // > 0 after a resource shortage: the count it happened at, a lower Max for a while
	hold    *time.Timer // ends the shortage's ceiling

	trips, shortages atomic.Uint64
	lastWarn         atomic.Int64 // unix nanos of the last shortage or write-failure log line

	perClient *perClient // nil: no per-client limit (LimitPerClient); set before the table uses it
}

// LowWater is where a full table takes new connections again: 10% below
// the limit (at least one connection below).
func LowWater(limit int) int { return limit - max(1, limit/10) }

// NewAdmission returns the admission control of a daemon holding at most
// maxConns connections; set writes the classifier's flag.
func NewAdmission(maxConns int, set func(full bool) error, log *slog.Logger) *Admission {
	return &Admission{Max: maxConns, Low: LowWater(maxConns), set: set, log: log}
}

// update brings the flag to what n live connections call for.
func (a *Admission) update(n int) {
	high, low := a.Max, a.Low
	if a.ceiling > 0 {
		high, low = a.ceiling, LowWater(a.ceiling)
	}
	switch {
	case !a.full && n >= high:
		a.write(true, n)
	case a.full && n < low:
		a.write(false, n)
	}
}

func (a *Admission) write(full bool, n int) {
	if err := a.set(full); err != nil {
		// The flag stays as it was; the next crossing tries again.
		a.warn("cannot write the admission flag", "err", err)
		return
	}
	a.full = full
	if full {
		a.trips.Add(1)
		a.log.Info("connection limit reached: new connections are forwarded unsplit", "live", n, "max_conns", a.Max, "resume_below", a.Low)
	} else {
		a.log.Info("below the low-water mark: new connections are split again", "live", n)
	}
}

// shortageHold is how long a resource shortage holds the flag up at least:
// then the normal marks apply again, and if the shortage persists the next
// failed accept trips it again (a failed accept resets nobody: the
// connection waits in the queue).
const shortageHold = 2 * time.Second

// shortage trips the flag at once, at n live connections: the daemon ran
// out of a resource a connection needs. n then acts as the limit, until the
// count falls 10% below it or shortageHold passes.
func (a *Admission) shortage(n int, err error, relock func(func(n int))) {
	a.shortages.Add(1)
	a.warn("out of resources for new connections: forwarding new ones unsplit", "live", n, "err", err)
	if a.ceiling == 0 || n < a.ceiling {
		a.ceiling = max(n, 1)
	}
	if !a.full {
		a.write(true, n)
	}
	if a.hold == nil {
		a.hold = time.AfterFunc(shortageHold, func() {
			relock(func(n int) {
				a.hold = nil
				a.ceiling = 0
				a.update(n)
			})
		})
	}
}

// warn logs at most once a second: a shortage comes as a storm.
func (a *Admission) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := a.lastWarn.Load()
	if now-last < int64(time.Second) || !a.lastWarn.CompareAndSwap(last, now) {
		return
	}
	a.log.Warn(msg, args...)
}

// IsResourceShortage says whether err means the host or the process ran out
// of something a connection needs (file descriptors, kernel memory, room in
// a BPF map), rather than a failure of this connection's peer.
func IsResourceShortage(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.E2BIG} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// LimitSource says what set a connection limit (the daemon logs it).
type LimitSource string

const (
	FromAsked    LimitSource = "asked"             // the operator's count
	FromFDLimit  LimitSource = "fd limit"          // RLIMIT_NOFILE
	FromMemory   LimitSource = "memory"            // half the host's (MemMaxConns)
	FromMapLimit LimitSource = "map limit"         // the largest maps (loader.MaxMapConns)
	FromMaps     LimitSource = "attachment's maps" // an existing attachment's, which cannot grow
)

// Limit is a daemon's admission limit and the fd budget it fits in.
type Limit struct {
	Max    int
	From   LimitSource
	Budget FDBudget
}

// MapConns is how many connections the BPF maps must hold under l: the
// limit and the accept queues.
func (l Limit) MapConns() int { return l.Budget.Capacity(l.Max) }

// SettleLimit raises RLIMIT_NOFILE and settles the connection limit: asked
// (asked > 0), it must fit the fd limit and the existing attachment's maps;
// derived (asked 0), it is the most that the fd limit, memory and those maps
// hold. A gateway (peerPort) budgets its peer connections too. The
// shortfalls are *FDShortError and *MapsShortError.
func SettleLimit(asked int, peerPort bool, log *slog.Logger) (Limit, error) {
	budget, err := NewFDBudget(2, peerPort)
	if err != nil {
		return Limit{}, err
	}
	l, err := FitFDs(asked, budget, MemMaxConns(), loader.MaxMapConns)
	if err != nil {
		return l, err
	}
	capacity, attached, err := loader.ExistingCapacity()
	if err != nil || !attached {
		return l, err // nothing attached: the maps are made to fit
	}
	return l.FitMaps(capacity, log)
}

// FitFDs settles the limit on the fd budget b: asked (asked > 0), it must
// fit; derived, it is the most that b, memory (memMax connections, 0:
// unknown) and maps of at most mapMax connections hold.
func FitFDs(asked int, b FDBudget, memMax, mapMax int) (Limit, error) {
	l := Limit{Max: asked, From: FromAsked, Budget: b.For(asked)}
	if asked > 0 {
		if need := l.Budget.Need(asked); need > b.Limit {
			return l, &FDShortError{Asked: asked, Need: need, Pipes: b.pipeFDs(asked), Peer: b.peerFDs(asked), Other: b.otherFDs(), Limit: b.Limit, Fits: b.MaxConns()}
		}
		return l, nil
	}
	l.Max, l.From = b.MaxConns(), FromFDLimit
	if memMax > 0 && memMax < l.Max {
		l.Max, l.From = memMax, FromMemory
	}
	// The maps hold the accept queues too.
	if b.For(l.Max).Capacity(l.Max) > mapMax {
		l.Max, l.From = b.fitting(mapMax, l.Max), FromMapLimit
	}
	l.Budget = b.For(l.Max)
	if l.Max < 1 {
		return l, fmt.Errorf("RLIMIT_NOFILE %d holds no connection (a daemon needs %d fds for its first): raise it", b.Limit, b.For(1).Need(1))
	}
	return l, nil
}

// FitMaps fits l into an existing attachment's maps, which hold capacity
// connections (accept queues included) and cannot grow: an asked limit
// must fit them, a derived one shrinks to them.
func (l Limit) FitMaps(capacity int, log *slog.Logger) (Limit, error) {
	if capacity >= l.MapConns() {
		return l, nil
	}
	if l.From == FromAsked {
		return l, &MapsShortError{Asked: l.Max, Capacity: capacity, Queued: l.Budget.Capacity(0)}
	}
	l.Max, l.From = l.Budget.fitting(capacity, l.Max), FromMaps
	l.Budget = l.Budget.For(l.Max)
	if l.Max < 1 {
		return l, &MapsShortError{Capacity: capacity, Queued: l.Budget.For(1).Capacity(0)}
	}
	log.Info("connection limit lowered to what the existing attachment's maps hold", "max_conns", l.Max)
	return l, nil
}

// FDShortError: an asked limit needs more fds than RLIMIT_NOFILE allows.
type FDShortError struct {
	Asked int    // the limit asked
	Need  uint64 // the fds it needs, of which
	Pipes int    // for splice pipes,
	Peer  int    // for a gateway's peer connections (0: none),
	Other int    // open already or reserved, and the rest two per connection and per queued accept
	Limit uint64 // RLIMIT_NOFILE
	Fits  int    // the largest limit it holds
}

// Shortfall is the arithmetic, for a caller that names the limit its own way.
func (e *FDShortError) Shortfall() string {
	peer := ""
	if e.Peer > 0 {
		peer = fmt.Sprintf(", %d for the peer port's connections", e.Peer)
	}
	return fmt.Sprintf("needs %d file descriptors (2 per connection and per queued accept, %d for splice pipes%s, %d open or reserved) but RLIMIT_NOFILE is %d",
		e.Need, e.Pipes, peer, e.Other, e.Limit)
}

func (e *FDShortError) Error() string {
	return fmt.Sprintf("a limit of %d connections %s: lower it to %d or raise RLIMIT_NOFILE", e.Asked, e.Shortfall(), e.Fits)
}

// MapsShortError: an existing attachment's maps hold fewer connections
// than the limit asked (Asked > 0), or than the accept queues (Asked 0).
type MapsShortError struct {
	Asked    int // 0: the limit was derived
	Capacity int // connections the maps hold
	Queued   int // of them, in accept queues
}

func (e *MapsShortError) Error() string {
	if e.Asked > 0 {
		return fmt.Sprintf("a limit of %d connections: the existing attachment's maps hold %d connections (including %d in accept queues): detach it and attach again with the limit, or lower it",
			e.Asked, e.Capacity, e.Queued)
	}
	return fmt.Sprintf("the existing attachment's maps hold %d connections, no more than the accept queues (%d): detach it and attach again", e.Capacity, e.Queued)
}
