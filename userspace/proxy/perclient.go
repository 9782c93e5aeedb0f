// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net/netip"
	"sync/atomic"
)

// DefaultPerClient is --max-conns-per-client's default for a daemon that
// holds maxConns: a quarter of it, so that one client address (a host, or
// a terminal pepsal's whole site when it does not dial --transparent)
// leaves at least three quarters to the others; but never below 256, what
// one busy host may hold (a browser's socket pool is 256), so a small
// --max-conns does not cap one ordinary client. At or past maxConns it is
// off (0): the global limit comes first.
func DefaultPerClient(maxConns int) int {
	n := max(maxConns/4, 256)
	if n >= maxConns {
		return 0
	}
	return n
}

// perClient keeps pepsal_srcfull in step with the live connections of each
// client address the classifier diverted: at Max, the address is written
// into the map (its new SYNs are forwarded unsplit), until its count falls
// below Low (hysteresis, as the global limit). It holds an entry only for
// an address with live connections. Guarded by the table's lock.
type perClient struct {
	Max, Low int
	set      func(addr netip.Addr, full bool) error // loader.Attachment.SetSourceFull
	live     map[netip.Addr]int
	full     map[netip.Addr]bool
	trips    atomic.Uint64 // times an address reached Max
	atLimit  atomic.Int64  // len(full), read without the lock
}

// LimitPerClient makes the admission limit each client address to max live
// diverted connections (0: no limit); set writes the classifier's mark.
func (a *Admission) LimitPerClient(max int, set func(addr netip.Addr, full bool) error) {
	if max <= 0 {
		a.perClient = nil
		return
	}
	a.perClient = &perClient{Max: max, Low: LowWater(max), set: set, live: map[netip.Addr]int{}, full: map[netip.Addr]bool{}}
}

// opened counts a new diverted connection of addr.
func (a *Admission) opened(addr netip.Addr) {
	pc := a.perClient
	if pc == nil {
		return
	}
	n := pc.live[addr] + 1
	pc.live[addr] = n
	if n >= pc.Max && !pc.full[addr] {
		a.writeSource(addr, true, n)
	}
}

// closed counts the end of a diverted connection of addr.
func (a *Admission) closed(addr netip.Addr) {
	pc := a.perClient
	if pc == nil {
		return
	}
	n := pc.live[addr] - 1
	if n <= 0 {
		delete(pc.live, addr)
	} else {
		pc.live[addr] = n
	}
	if pc.full[addr] && n < pc.Low {
		a.writeSource(addr, false, n)
	}
}

func (a *Admission) writeSource(addr netip.Addr, full bool, n int) {
	pc := a.perClient
	if err := pc.set(addr, full); err != nil {
		// The mark stays as it was; the next connection of addr tries again.
		a.warn("cannot write a client's limit mark", "client", addr, "err", err)
		return
	}
	if full {
		pc.full[addr] = true
		pc.trips.Add(1)
		a.log.Info("client at its connection limit: its new connections are forwarded unsplit", "client", addr, "live", n, "max_conns_per_client", pc.Max, "resume_below", pc.Low)
	} else {
		delete(pc.full, addr)
		a.log.Debug("client below its low-water mark: its new connections are split again", "client", addr, "live", n)
	}
	pc.atLimit.Store(int64(len(pc.full)))
}

// perClientStats are the per-client limit, the addresses at it now, and
// how many times one reached it (zeros without a limit).
func (a *Admission) perClientStats() (max, low, atLimit int, trips uint64) {
	pc := a.perClient
	if pc == nil {
		return 0, 0, 0, 0
	}
	return pc.Max, pc.Low, int(pc.atLimit.Load()), pc.trips.Load()
}
