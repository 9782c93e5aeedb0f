// SPDX-License-Identifier: Apache-2.0

// Package relay moves a split connection's bytes between its two legs,
// once both are connected, and says how the connection ended: by splice(2)
// through pooled pipes (Splice), or in the kernel through the sk_skb verdict
// and its maps (Kernel), the latter falling back to splice where the kernel
// cannot take a connection, and optionally starting in splice (an offload).
// It owns the pipes, the idle waiter that lets an idle connection hold no
// goroutine, the hand-over from splice to the kernel, and the kernel
// relay's books.
//
// It must not dial, accept or count outcomes: the legs come connected, the
// outcome goes to the caller, and the connection's record (conn.Conn) is
// only written, never looked up. Of pepsal it imports conn, sockopt,
// internal/enum and loader (the maps' value types), nothing else.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/enum"
)

// Relay moves a connection's bytes between two connected legs.
type Relay interface {
	// Via is the relay a connection is recorded with when it is accepted:
	// the one asked for (Start may still fall back).
	Via() conn.Via
	// Start relays and returns at once; no goroutine is held while the
	// connection is idle. done gets conn.Completed or conn.WasReset once
	// both legs are closed. Whoever cancels ctx must also reset both legs
	// (the relay then ends as reset).
	Start(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st Setup, done func(conn.Outcome))
}

// Setup is what userspace did on the legs before the relay starts.
type Setup struct {
	Pre        int64 // client bytes already written to the server (fast open's first bytes)
	PreDown    int64 // server bytes already written to the client
	ClientRead int64 // bytes read from the client and not relayed (a warm path's header)
	ServerRead int64 // bytes read from the server and not relayed (a warm path's hello)
	// PartlyRead: the client leg may hold an skb read in part (the first
	// bytes stopped at a bound). The kernel's verdict would get it whole
	// again, so the kernel relay leaves such a connection to splice.
	PartlyRead bool
	// BeforeClose run right before the graceful close of the client and the
	// server leg (nil: nothing to run), whichever relay closes them: the
	// gateway's pacing books a warm flow's last bytes while its socket can
	// still be read.
	BeforeClose [2]func()
}

// Mode is the relay a daemon is asked for (--relay).
type Mode uint8

const (
	ModeSplice  Mode = iota // splice(2) in userspace
	ModeSockmap             // the kernel relay (Kernel), where the kernel can
)

// modeNames are the modes' texts, in value order.
var modeNames = enum.Names{ModeSplice: "splice", ModeSockmap: "sockmap"}

// ErrBadRelay: a relay mode is "splice" or "sockmap".
var ErrBadRelay = errors.New("relay must be splice or sockmap")

// String is the mode as --relay takes it.
func (m Mode) String() string { return modeNames.Of(uint8(m), "mode") }

// UnmarshalText reads what String wrote; an unknown mode is ErrBadRelay and
// leaves m as it was.
func (m *Mode) UnmarshalText(text []byte) error {
	return enum.Parse(m, modeNames, text, func(text []byte) error { return fmt.Errorf("%w, not %q", ErrBadRelay, text) })
}

// Maps is the kernel relay's state: the SOCKHASH the verdict redirects
// through, and per direction its counters and the bytes userspace wrote
// (loader.Relay implements it).
type Maps interface {
	// Prepare creates the state of both directions before either socket is
	// inserted; on error nothing is left.
	Prepare(a, b loader.RelaySide, budget uint64) error
	// Insert puts a socket into the SOCKHASH: from then on its data goes
	// through the verdict.
	Insert(cookie uint64, fd int) error
	// Dir reads a direction's counters (keyed by its source socket).
	Dir(cookie uint64) (loader.RelayDir, error)
	// SetUser publishes how many bytes of a direction userspace wrote.
	SetUser(cookie uint64, bytes uint64) error
	// Forget deletes the state of a connection's directions.
	Forget(cookies ...uint64)
}

// The loader's handle is what the daemon wires in.
var _ Maps = (*loader.Relay)(nil)
