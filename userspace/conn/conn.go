// SPDX-License-Identifier: Apache-2.0

// Package conn is the record of one split connection as the proxy, the
// relays and the status see it: its addresses, bytes moved, which relay
// moves them (RelayState, with a fallback's reason), where it is in its life
// and how it ended (Outcome).
//
// It knows neither the connection table nor the relays: they write the
// record, the table and the metrics read it. It holds no package-level
// state and imports no pepsal package but internal/enum.
package conn

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is one split connection as the table holds it. The relays and the
// pipeline write it from their own goroutines; every field is safe to read
// at any time.
type Conn struct {
	ID      uint64
	Client  netip.AddrPort // the real client
	Server  netip.AddrPort // the original destination
	Started time.Time

	relay atomic.Pointer[RelayState] // nil: Splice, the zero value
	peer  atomic.Value               // string: "warm" when the flow rode a warm path between two pepsals

	state      atomic.Value                    // string
	moved      Moved                           // once the kernel relay is done, or all along in userspace
	mu         sync.Mutex                      // guards moved
	clientDone atomic.Bool                     // client half-closed its sending side
	serverDone atomic.Bool                     // server half-closed its sending side
	liveMoved  atomic.Pointer[func() Moved]    // while the kernel moves the bytes
	liveBytes  atomic.Pointer[func() Moved]    // liveMoved without the backlog: cheaper, for metrics
	legs       atomic.Pointer[[2]*net.TCPConn] // client and server sockets, while open
}

// New is the record of a connection just accepted, to be relayed via: its
// state "connecting", its relay the one asked for.
func New(id uint64, client, server netip.AddrPort, via Via) *Conn {
	c := &Conn{ID: id, Client: client, Server: server, Started: time.Now()}
	c.SetRelay(RelayState{Via: via})
	c.SetState("connecting")
	return c
}

// Moved counts a connection's bytes each way, and how many of them the
// kernel relay moved without userspace.
type Moved struct {
	ToServer, ToClient             int64
	KernelToServer, KernelToClient int64
	// Held by the kernel relay: bytes it redirected toward a leg that are
	// not yet in that leg's send queue (the psock backlog, which no socket
	// memory count shows). Live only; zero once the relay ended.
	BacklogToServer, BacklogToClient int64
}

// AddMoved counts bytes moved by userspace.
func (c *Conn) AddMoved(toServer, toClient int64) {
	c.mu.Lock()
	c.moved.ToServer += toServer
	c.moved.ToClient += toClient
	c.mu.Unlock()
}

// Moved is how many bytes went each way so far.
func (c *Conn) Moved() Moved {
	if f := c.liveMoved.Load(); f != nil {
		return (*f)()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moved
}

// SetLiveMoved makes Moved ask live while the kernel moves the bytes (its
// books are in the relay's maps, not here), until SetMoved.
func (c *Conn) SetLiveMoved(live func() Moved) { c.liveMoved.Store(&live) }

// SetMoved records the final counts of a connection the kernel relayed.
func (c *Conn) SetMoved(m Moved) {
	c.mu.Lock()
	c.moved = m
	c.mu.Unlock()
	c.liveMoved.Store(nil)
	c.liveBytes.Store(nil)
}

// SetLiveBytes gives BytesMoved a cheaper live count than SetLiveMoved's:
// the bytes each way and the kernel's share, without the backlog.
func (c *Conn) SetLiveBytes(live func() Moved) { c.liveBytes.Store(&live) }

// BytesMoved is Moved without the backlog fields, as cheap as the relay
// can make it: what a metrics scrape reads of every live connection.
func (c *Conn) BytesMoved() Moved {
	if f := c.liveBytes.Load(); f != nil {
		return (*f)()
	}
	m := c.Moved()
	m.BacklogToServer, m.BacklogToClient = 0, 0
	return m
}

// SetLegs records the two sockets, so that `pepsal conns` can read their state.
func (c *Conn) SetLegs(client, server *net.TCPConn) {
	c.legs.Store(&[2]*net.TCPConn{client, server})
}

// DropLegs forgets the sockets once the connection is over.
func (c *Conn) DropLegs() { c.legs.Store(nil) }

// Legs are the two sockets; both nil before SetLegs and after DropLegs.
func (c *Conn) Legs() (client, server *net.TCPConn) {
	if l := c.legs.Load(); l != nil {
		return l[0], l[1]
	}
	return nil, nil
}

// SetRelay records how the connection's bytes are moved.
func (c *Conn) SetRelay(r RelayState) { c.relay.Store(&r) }

// Relay is how the connection's bytes are moved.
func (c *Conn) Relay() RelayState {
	if r := c.relay.Load(); r != nil {
		return *r
	}
	return RelayState{}
}

// SetPeer records that the flow rode a warm path between two pepsals.
func (c *Conn) SetPeer(p string) { c.peer.Store(p) }

// Peer is "warm" for a flow that rode a warm path, else "".
func (c *Conn) Peer() string { p, _ := c.peer.Load().(string); return p }

// SetState records where the connection is in its life.
func (c *Conn) SetState(s string) { c.state.Store(s) }

// State is where the connection is in its life ("connecting",
// "established", a half-close, "closing").
func (c *Conn) State() string { s, _ := c.state.Load().(string); return s }

// ClientHalfClosed records that the client shut down its sending side.
func (c *Conn) ClientHalfClosed() { c.clientDone.Store(true); c.SetState(c.halfState()) }

// ServerHalfClosed records that the server shut down its sending side.
func (c *Conn) ServerHalfClosed() { c.serverDone.Store(true); c.SetState(c.halfState()) }

func (c *Conn) halfState() string {
	switch {
	case c.clientDone.Load() && c.serverDone.Load():
		return "closing"
	case c.clientDone.Load():
		return "client-half-closed"
	default:
		return "server-half-closed"
	}
}
