package userspace

import (
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/userspace/report"
)

// Conn is one split connection as the table holds it.
type Conn struct {
	ID      uint64
	Client  netip.AddrPort // the real client
	Server  netip.AddrPort // the original destination
	Started time.Time

	relay atomic.Value // string: "splice", "kernel", "splice until offload" (sockmap, under --offload-after) or "userspace: why"
	peer  atomic.Value // string: "warm" when the flow rode a warm path between two pepsals

	state      atomic.Value                    // string
	moved      Moved                           // once the kernel relay is done, or all along in userspace
	mu         sync.Mutex                      // guards moved
	clientDone atomic.Bool                     // client half-closed its sending side
	serverDone atomic.Bool                     // server half-closed its sending side
	liveMoved  atomic.Pointer[func() Moved]    // while the kernel moves the bytes
	legs       atomic.Pointer[[2]*net.TCPConn] // client and server sockets, while open
}

// Moved counts a connection's bytes each way, and how many of them the
// kernel relay moved without userspace.
type Moved struct {
	ToServer, ToClient             int64
	KernelToServer, KernelToClient int64
}

// add counts bytes moved by userspace.
func (c *Conn) add(toServer, toClient int64) {
	c.mu.Lock()
	c.moved.ToServer += toServer
	c.moved.ToClient += toClient
	c.mu.Unlock()
}

// setLegs records the two sockets, so that `pepsal conns` can read their state.
func (c *Conn) setLegs(client, server *net.TCPConn) { c.legs.Store(&[2]*net.TCPConn{client, server}) }

// Moved is how many bytes went each way so far.
func (c *Conn) Moved() Moved {
	if f := c.liveMoved.Load(); f != nil {
		return (*f)()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moved
}

// setMoved records the final counts of a connection the kernel relayed.
func (c *Conn) setMoved(m Moved) {
	c.mu.Lock()
	c.moved = m
	c.mu.Unlock()
	c.liveMoved.Store(nil)
}

// SetRelay records how the connection's bytes are moved.
func (c *Conn) SetRelay(r string) { c.relay.Store(r) }

// Relay is how the connection's bytes are moved.
func (c *Conn) Relay() string { r, _ := c.relay.Load().(string); return r }

// SetPeer records that the flow rode a warm path between two pepsals.
func (c *Conn) SetPeer(p string) { c.peer.Store(p) }

// SetState records where the connection is in its life.
func (c *Conn) SetState(s string) { c.state.Store(s) }

// Table is the set of live connections plus totals.
type Table struct {
	mu    sync.Mutex
	conns map[uint64]*Conn
	next  uint64

	accepted, completed, reset, upstreamFailed, loopRefused, fallback atomic.Uint64
	bytesToServer, bytesToClient, kernelBytes                         atomic.Uint64
	fallbackBy                                                        map[string]uint64 // closed fallbacks by fallbackReason; guarded by mu

	admission *Admission // nil: no limit; guarded by mu once set
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

// withCount runs f with the live count under the table's lock.
func (t *Table) withCount(f func(n int)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(len(t.conns))
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{conns: map[uint64]*Conn{}, fallbackBy: map[string]uint64{}} }

// Add registers a freshly accepted connection.
func (t *Table) Add(client, server netip.AddrPort, relay string) *Conn {
	t.accepted.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	c := &Conn{ID: t.next, Client: client, Server: server, Started: time.Now()}
	c.SetRelay(relay)
	c.SetState("connecting")
	t.conns[c.ID] = c
	if t.admission != nil {
		t.admission.update(len(t.conns))
	}
	return c
}

// Outcome is how a connection ended.
type Outcome int

const (
	Completed Outcome = iota
	WasReset
	UpstreamFailed
	LoopRefused
)

// Remove drops a connection and accounts for how it ended.
func (t *Table) Remove(c *Conn, how Outcome) {
	t.mu.Lock()
	delete(t.conns, c.ID)
	if t.admission != nil {
		t.admission.update(len(t.conns))
	}
	if reason, ok := fallbackReason(c.Relay()); ok {
		t.fallbackBy[reason]++
	}
	t.mu.Unlock()
	c.legs.Store(nil)
	if strings.HasPrefix(c.Relay(), "userspace") {
		t.fallback.Add(1)
	}
	m := c.Moved()
	t.bytesToServer.Add(uint64(m.ToServer))
	t.bytesToClient.Add(uint64(m.ToClient))
	t.kernelBytes.Add(uint64(m.KernelToServer + m.KernelToClient))
	switch how {
	case Completed:
		t.completed.Add(1)
	case WasReset:
		t.reset.Add(1)
	case UpstreamFailed:
		t.upstreamFailed.Add(1)
	case LoopRefused:
		t.loopRefused.Add(1)
	}
}

// Len is the number of live connections.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Stats returns the totals.
func (t *Table) Stats() report.Stats {
	s := t.counts()
	s.FallbackByReason = map[string]uint64{}
	t.mu.Lock()
	for _, reason := range fallbackReasons {
		s.FallbackByReason[reason] = t.fallbackBy[reason]
	}
	if a := t.admission; a != nil {
		s.MaxConns, s.LowWater, s.Full = a.Max, a.Low, a.full
		s.FullTrips, s.Shortages, s.FDLimit = a.trips.Load(), a.shortages.Load(), a.FDLimit
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
		Fallback:       t.fallback.Load(),
		BytesToServer:  t.bytesToServer.Load(),
		BytesToClient:  t.bytesToClient.Load(),
		KernelBytes:    t.kernelBytes.Load(),
	}
}

// Snapshot lists the live connections, oldest first.
func (t *Table) Snapshot() []report.ConnInfo {
	t.mu.Lock()
	conns := make([]*Conn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	out := make([]report.ConnInfo, 0, len(conns))
	for _, c := range conns { // TCP_INFO outside the lock: accepts must not wait on it
		state, _ := c.state.Load().(string)
		m := c.Moved()
		out = append(out, report.ConnInfo{
			ID:                  c.ID,
			Client:              c.Client.String(),
			Server:              c.Server.String(),
			Relay:               c.Relay(),
			Peer:                peerOf(c),
			State:               state,
			BytesToServer:       m.ToServer,
			BytesToClient:       m.ToClient,
			KernelBytesToServer: m.KernelToServer,
			KernelBytesToClient: m.KernelToClient,
			AgeSeconds:          time.Since(c.Started).Seconds(),
		})
		if legs := c.legs.Load(); legs != nil {
			out[len(out)-1].ClientLeg = legInfo(legs[0])
			out[len(out)-1].ServerLeg = legInfo(legs[1])
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
