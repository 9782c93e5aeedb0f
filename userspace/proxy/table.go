// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/report"
)

// Table is the set of live connections plus totals.
type Table struct {
	mu    sync.Mutex
	conns map[uint64]*conn.Conn
	next  uint64

	accepted, completed, reset, upstreamFailed, loopRefused, fallback atomic.Uint64
	destDenied                                                        atomic.Uint64
	bytesToServer, bytesToClient, kernelBytes                         atomic.Uint64
	kernelToServer, kernelToClient                                    atomic.Uint64                  // kernelBytes by direction
	fallbackBy                                                        map[conn.FallbackReason]uint64 // closed fallbacks; guarded by mu
	deniedBy                                                          map[conn.DenyReason]uint64     // refused destinations; guarded by mu

	admission *Admission // nil: no limit; guarded by mu once set
	// diverted are the client addresses of the live connections counted
	// against their client's share (AddDiverted); guarded by mu.
	diverted map[uint64]netip.Addr
}

// SetAdmission makes every Add and Remove keep a's flag in step with the
// number of live connections.
func (t *Table) SetAdmission(a *Admission) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.admission = a
	a.update(len(t.conns))
}

// ResourceShortage tells the admission control that an accept or a dial
// failed with err. When err is a shortage (EMFILE, ENFILE, ENOMEM, ENOBUFS,
// a full BPF map), new SYNs go unsplit at once rather than to a daemon that
// cannot serve them, and it returns true.
func (t *Table) ResourceShortage(err error) bool {
	if err == nil || !IsResourceShortage(err) {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.admission != nil {
		t.admission.shortage(len(t.conns), err, t.withCount)
	}
	return true
}

// Full says whether the admission limit holds new connections off now
// (the classifier forwards new SYNs unsplit): the warm-path gateway then
// takes no new warm connection either.
func (t *Table) Full() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.admission != nil && t.admission.full
}

// withCount runs f with the live count under the table's lock.
func (t *Table) withCount(f func(n int)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(len(t.conns))
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{conns: map[uint64]*conn.Conn{}, diverted: map[uint64]netip.Addr{}, fallbackBy: map[conn.FallbackReason]uint64{}, deniedBy: map[conn.DenyReason]uint64{}}
}

// Add registers a freshly accepted connection, to be relayed via.
func (t *Table) Add(client, server netip.AddrPort, via conn.Via) *conn.Conn {
	return t.add(client, server, via, false)
}

// AddDiverted is Add for a connection whose SYN the classifier diverted:
// it counts against its client address's share (--max-conns-per-client).
// (The gateway's warm flows did not pass the classifier: their client
// address is a terminal's word.)
func (t *Table) AddDiverted(client, server netip.AddrPort, via conn.Via) *conn.Conn {
	return t.add(client, server, via, true)
}

func (t *Table) add(client, server netip.AddrPort, via conn.Via, diverted bool) *conn.Conn {
	t.accepted.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	c := conn.New(t.next, client, server, via)
	t.conns[c.ID] = c
	if t.admission != nil {
		if diverted && t.admission.perClient != nil {
			addr := client.Addr().Unmap()
			t.diverted[c.ID] = addr
			t.admission.opened(addr)
		}
		t.admission.update(len(t.conns))
	}
	return c
}

// Remove drops a connection and accounts for how it ended.
func (t *Table) Remove(c *conn.Conn, how conn.Outcome) {
	m := c.Moved() // the relay is over: its final count, read before the lock
	t.mu.Lock()
	delete(t.conns, c.ID)
	// In the totals in the same step as out of the table: a scrape
	// (LiveBytes) counts the connection once, live or closed, never neither.
	t.bytesToServer.Add(uint64(m.ToServer))
	t.bytesToClient.Add(uint64(m.ToClient))
	t.kernelBytes.Add(uint64(m.KernelToServer + m.KernelToClient))
	t.kernelToServer.Add(uint64(m.KernelToServer))
	t.kernelToClient.Add(uint64(m.KernelToClient))
	if addr, ok := t.diverted[c.ID]; ok {
		delete(t.diverted, c.ID)
		t.admission.closed(addr)
	}
	if t.admission != nil {
		t.admission.update(len(t.conns))
	}
	reason, fellBack := c.Relay().Fallback()
	if fellBack {
		t.fallbackBy[reason]++
	}
	t.mu.Unlock()
	c.DropLegs()
	if fellBack {
		t.fallback.Add(1)
	}
	switch how {
	case conn.Completed:
		t.completed.Add(1)
	case conn.WasReset:
		t.reset.Add(1)
	case conn.UpstreamFailed:
		t.upstreamFailed.Add(1)
	case conn.LoopRefused:
		t.loopRefused.Add(1)
	case conn.DestDenied:
		t.destDenied.Add(1)
	}
}

// Deny drops a connection whose destination the policy refused, counted
// by reason.
func (t *Table) Deny(c *conn.Conn, why conn.DenyReason) {
	t.mu.Lock()
	t.deniedBy[why]++
	t.mu.Unlock()
	t.Remove(c, conn.DestDenied)
}

// Len is the number of live connections.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// FallbacksLive counts the live connections that fell back to userspace,
// by reason. Unlike Snapshot it reads no socket: a metrics scrape needs
// none.
func (t *Table) FallbacksLive() map[conn.FallbackReason]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	live := map[conn.FallbackReason]int{}
	for _, c := range t.conns {
		if reason, ok := c.Relay().Fallback(); ok {
			live[reason]++
		}
	}
	return live
}

// Stats returns the totals.
func (t *Table) Stats() report.Stats {
	s := t.counts()
	s.FallbackByReason = map[string]uint64{}
	t.mu.Lock()
	for _, reason := range conn.FallbackReasons() {
		s.FallbackByReason[reason.String()] = t.fallbackBy[reason]
	}
	s.DestDeniedByReason = map[string]uint64{}
	for _, reason := range conn.DenyReasons() {
		s.DestDeniedByReason[reason.String()] = t.deniedBy[reason]
	}
	if a := t.admission; a != nil {
		s.MaxConns, s.LowWater, s.Full = a.Max, a.Low, a.full
		s.FullTrips, s.Shortages, s.FDLimit = a.trips.Load(), a.shortages.Load(), a.FDLimit
		s.ShortageCeiling = a.ceiling
		s.MaxConnsPerClient, s.LowWaterPerClient, s.ClientsAtLimit, s.ClientLimitTrips = a.perClientStats()
	}
	t.mu.Unlock()
	return s
}

func (t *Table) counts() report.Stats {
	return report.Stats{
		Accepted:       t.accepted.Load(),
		Active:         int64(t.Len()),
		Completed:      t.completed.Load(),
		Reset:          t.reset.Load(),
		UpstreamFailed: t.upstreamFailed.Load(),
		LoopRefused:    t.loopRefused.Load(),
		DestDenied:     t.destDenied.Load(),
		Fallback:       t.fallback.Load(),
		BytesToServer:  t.bytesToServer.Load(),
		BytesToClient:  t.bytesToClient.Load(),
		KernelBytes:    t.kernelBytes.Load(),
	}
}

// Snapshot lists the live connections, oldest first.
func (t *Table) Snapshot() []report.ConnInfo {
	t.mu.Lock()
	conns := make([]*conn.Conn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	out := make([]report.ConnInfo, 0, len(conns))
	for _, c := range conns { // TCP_INFO outside the lock: accepts must not wait on it
		m := c.Moved()
		out = append(out, report.ConnInfo{
			ID:                    c.ID,
			Client:                c.Client.String(),
			Server:                c.Server.String(),
			Relay:                 c.Relay().String(),
			Peer:                  c.Peer(),
			State:                 c.State(),
			BytesToServer:         m.ToServer,
			BytesToClient:         m.ToClient,
			KernelBytesToServer:   m.KernelToServer,
			KernelBytesToClient:   m.KernelToClient,
			KernelBacklogToServer: m.BacklogToServer,
			KernelBacklogToClient: m.BacklogToClient,
			AgeSeconds:            time.Since(c.Started).Seconds(),
		})
		if client, server := c.Legs(); client != nil {
			out[len(out)-1].ClientLeg = legInfo(client)
			out[len(out)-1].ServerLeg = legInfo(server)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
