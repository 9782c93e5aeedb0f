// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// Kernel moves a connection's bytes in the kernel: both sockets go into
// pepsal_relay and the sk_skb verdict redirects each side's data to the other.
// Userspace keeps three jobs, which make the mode safe:
//   - it moves what the verdict leaves on a socket (budget reached, order to
//     keep, peer not in the map), in order, after everything the kernel
//     redirected before it;
//   - it turns EOF into a half-close and an error into a reset, but only
//     once every byte redirected toward that socket is in its TCP send queue
//     (closing earlier would drop the psock's backlog: silent truncation);
//   - it relays in plain userspace the connections that cannot be inserted.
type Kernel struct {
	Log    *slog.Logger
	Maps   Maps
	Budget uint64 // bytes redirected toward a socket and not yet in its send queue (the psock backlog)
	// OffloadAfter: a connection is relayed by splice until it has moved
	// this many bytes (both ways), then goes into the kernel (0: at once).
	// Putting sockets into the SOCKHASH and taking them out costs more CPU
	// than a short connection's bytes, and an idle connection in the map
	// costs its two psocks' memory for nothing.
	OffloadAfter int64
	// Splice relays the connections the kernel cannot take, and those not
	// yet offloaded; its idle waiter is the kernel relay's too.
	Splice Splice
}

// relayDir is one direction of a connection: bytes read from src go to dst.
type relayDir struct {
	src, dst  *net.TCPConn
	cookie    uint64 // src's socket cookie: key of its state in the maps
	inMap     bool   // src is in pepsal_relay (else the kernel never sees its data)
	dstBase   uint64 // dst's acked sequence space that is not data (its SYN if dialed)
	srcSkip   uint64 // bytes src received that userspace read and did not relay
	userBytes atomic.Int64
	dstShut   atomic.Bool   // this direction half-closes (or closed) dst: its FIN is ours
	peer      *relayDir     // the other direction: its dst is this one's src
	phase     atomic.Uint32 // where the direction is (see pump), for the log of an aborted relay

	// Owned by the direction's pump goroutine:
	flushed     uint64    // kernel_bytes already seen in dst's send queue
	seenPassed  uint64    // passed_bytes at the last look at the maps
	published   uint64    // user bytes last written to pepsal_relayusr
	unseenSince time.Time // since when, at EOF, received bytes wait for the verdict
	slot        idleSlot  // src in the idle waiter while nothing is there for userspace
}

// unseenLimit bounds the wait, at EOF, for received bytes to reach the verdict.
const unseenLimit = 5 * time.Second

// kernelStart is Setup with what the splice relay hands over at an offload.
type kernelStart struct {
	Setup
	slots     [2]idleSlot // the sockets' registrations in the idle waiter, if any (up, down)
	offloaded bool        // splice already ran: the kernel takes over now
}

// Via is conn.Kernel.
func (k *Kernel) Via() conn.Via { return conn.Kernel }

// Start relays the connection; the first st.Pre bytes from the client were
// already written to the server by userspace (fast open). It returns at
// once; done gets the outcome once both sockets are closed. No goroutine
// is held while the connection is idle (see Splice.Start). A client leg
// read in part (st.PartlyRead) is left to splice.
func (k *Kernel) Start(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st Setup, done func(conn.Outcome)) {
	if k.partlyRead(c, st) {
		k.Splice.Start(ctx, c, client, server, st, done)
		return
	}
	k.start(ctx, c, client, server, kernelStart{Setup: st}, done)
}

// partlyRead says whether the client leg may hold an skb read in part,
// which the verdict would get whole again; the connection is recorded as
// a fallback to splice then.
func (k *Kernel) partlyRead(c *conn.Conn, st Setup) bool {
	if st.PartlyRead {
		c.SetRelay(conn.Fallback(conn.FirstBytesPartial, "first bytes not read whole"))
	}
	return st.PartlyRead
}

// start relays in splice until the offload, if one is asked for, else puts
// the connection into the kernel relay now.
func (k *Kernel) start(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st kernelStart, done func(conn.Outcome)) {
	if k.OffloadAfter > 0 && !st.offloaded && k.Splice.Waiter != nil {
		c.SetRelay(conn.RelayState{Via: conn.SpliceUntilOffload})
		k.Splice.relayWith(ctx, c, client, server, done, spliceOpts{
			offloadAfter: k.OffloadAfter,
			beforeClose:  st.BeforeClose,
			offload: func(up, down int64, slots [2]idleSlot) {
				st.Pre += up
				st.PreDown += down
				st.slots, st.offloaded = slots, true
				k.start(ctx, c, client, server, st, done)
			},
		})
		return
	}
	k.insert(ctx, c, client, server, st, done)
}

// insert puts the connection into the kernel relay; where it cannot, the
// splice relay takes it, and c records the fallback.
func (k *Kernel) insert(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st kernelStart, done func(conn.Outcome)) {
	fallback := func(done func(conn.Outcome)) {
		k.Splice.relayWith(ctx, c, client, server, done, spliceOpts{slots: st.slots, beforeClose: st.BeforeClose})
	}
	up, down := k.prepare(c, client, server, st)
	if up == nil {
		fallback(done)
		return
	}
	if err := sockopt.WithFD(client, func(fd int) error { return k.Maps.Insert(up.cookie, fd) }); err != nil {
		c.SetRelay(conn.Fallback(conn.InsertFailed, "client: "+err.Error()))
		fallback(func(o conn.Outcome) {
			k.Maps.Forget(up.cookie, down.cookie)
			done(o)
		})
		return
	}
	up.inMap = true
	c.SetRelay(conn.RelayState{Via: conn.Kernel})
	// From here the client is in the map for good (removing it would drop
	// whatever the verdict left on it), so a failure below keeps it there
	// and relays through it in userspace.
	if err := sockopt.WithFD(server, func(fd int) error { return k.Maps.Insert(down.cookie, fd) }); err != nil {
		c.SetRelay(conn.Fallback(conn.InsertFailed, "server: "+err.Error()))
	} else {
		down.inMap = true
	}
	// Bytes that arrived before insertion wait in the receive queue, unseen by
	// the verdict until more data comes; setting SO_RCVLOWAT runs the
	// socket's data_ready now, which hands them to the verdict, in order.
	for _, d := range []*relayDir{up, down} {
		if d.inMap {
			_ = sockopt.WithFD(d.src, func(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) })
		}
	}
	live := func() conn.Moved { return k.moved(up, down) }
	c.SetLiveMoved(live)
	c.SetLiveBytes(func() conn.Moved { return k.movedBytes(up, down) })
	k.run(ctx, c, client, server, up, down, st.BeforeClose, done)
}

// prepare reads what the relay needs of both legs and creates both
// directions' state in the maps, before either socket is inserted. When it
// cannot, it records the fallback on c and returns nil.
func (k *Kernel) prepare(c *conn.Conn, client, server *net.TCPConn, st kernelStart) (up, down *relayDir) {
	pre := st.Pre
	clientCookie, err1 := sockopt.Cookie(client)
	serverCookie, err2 := sockopt.Cookie(server)
	if err := errors.Join(err1, err2); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		return nil, nil
	}
	// A socket that already got its peer's FIN cannot be inserted; read
	// the state first, and keep the whole connection in userspace then.
	for _, s := range []struct {
		who  string
		conn *net.TCPConn
	}{{"client", client}, {"server", server}} {
		if st := sockopt.TCPState(s.conn); st != unix.BPF_TCP_ESTABLISHED {
			c.SetRelay(conn.Fallback(conn.ClosedBeforeInsert, s.who+" closed before insert"))
			return nil, nil
		}
	}
	// TCP_INFO's bytes_acked counts sequence space: on the dialed server
	// leg it includes the SYN. Taken for data, that one byte made the relay
	// shut the server leg down while the last byte still waited in the psock
	// backlog (a silent truncation). Measured here, before any relayed byte.
	clientBase, err1 := seqBase(client, uint64(st.PreDown))
	serverBase, err2 := seqBase(server, uint64(pre))
	if err := errors.Join(err1, err2); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		return nil, nil
	}
	if err := k.Maps.Prepare(
		loader.RelaySide{Cookie: clientCookie, Pre: uint64(pre), SeqBase: clientBase},
		loader.RelaySide{Cookie: serverCookie, Pre: uint64(st.PreDown), SeqBase: serverBase},
		k.Budget); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		return nil, nil
	}
	up = &relayDir{src: client, dst: server, cookie: clientCookie, dstBase: serverBase, srcSkip: uint64(st.ClientRead)}
	up.userBytes.Store(pre)
	up.published = uint64(pre)
	up.slot = st.slots[0]
	down = &relayDir{src: server, dst: client, cookie: serverCookie, dstBase: clientBase, srcSkip: uint64(st.ServerRead), slot: st.slots[1]}
	down.userBytes.Store(st.PreDown)
	down.published = uint64(st.PreDown)
	up.peer, down.peer = down, up
	return up, down
}

// run pumps both directions of an inserted connection until both ended,
// then ends the relay: the maps forgotten, the legs closed (gracefully,
// running beforeClose first, unless a direction failed and reset both).
func (k *Kernel) run(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, up, down *relayDir, beforeClose [2]func(), done func(conn.Outcome)) {
	w := k.Splice.Waiter
	var abortOnce sync.Once
	var aborted atomic.Bool
	relayCtx, cancel := context.WithCancel(ctx)
	abort := func() {
		abortOnce.Do(func() {
			aborted.Store(true)
			cancel()
			sockopt.Reset(client)
			sockopt.Reset(server)
		})
	}
	// Neither direction holds a goroutine while its socket has nothing for
	// userspace (the common case: the kernel moves the bytes): each runs
	// in steps, woken by the idle waiter; the last to end ends the relay.
	stopWake := func() bool { return false }
	if w != nil {
		stopWake = context.AfterFunc(relayCtx, func() { w.wake(&up.slot); w.wake(&down.slot) })
	}
	var left atomic.Int32
	left.Store(2)
	finished := func() {
		if left.Add(-1) != 0 {
			return
		}
		stopWake()
		cancel()
		m := k.moved(up, down)
		m.BacklogToServer, m.BacklogToClient = 0, 0 // the record of an ended relay: nothing held
		c.SetMoved(m)
		k.Maps.Forget(up.cookie, down.cookie)
		if aborted.Load() { // both legs already reset
			done(conn.WasReset)
			return
		}
		closeGracefully(client, beforeClose[0])
		closeGracefully(server, beforeClose[1])
		done(conn.Completed)
	}
	for _, d := range []*relayDir{up, down} {
		k.pumpAsync(relayCtx, d, w, func(err error) {
			defer finished()
			if err != nil {
				if !aborted.Load() {
					k.Log.Debug("relay aborted", "conn", c.ID, "from", d.src.RemoteAddr(), "err", err,
						"up", up.where(), "down", down.where())
				}
				abort()
			}
		})
	}
}

// where says what the direction was doing last (for the log of an aborted
// relay: a direction that never ended shows where it waited).
func (d *relayDir) where() string {
	return phaseNames[d.phase.Load()]
}

// Phases of a direction (relayDir.phase): one atomic store each on the
// pump's path.
const (
	phaseStart    = iota // runSteps waits before the first step
	phaseReading         // reading src
	phaseParked          // nothing for userspace: waiting in the idle waiter
	phaseFlushing        // waiting for the kernel's bytes to reach dst before a write
	phaseEOFBooks        // EOF: waiting for the books
	phaseEOFFlush        // EOF: waiting for the kernel's bytes before the half-close
)

var phaseNames = [...]string{
	phaseStart:    "parked since the start",
	phaseReading:  "reading",
	phaseParked:   "parked",
	phaseFlushing: "flushing before a write",
	phaseEOFBooks: "EOF: waiting for the books",
	phaseEOFFlush: "EOF: flushing",
}

// moved is how many bytes of each direction reached the destination socket,
// how many of them the kernel moved, and, while the relay runs, how many
// the kernel holds in the destination's psock backlog.
func (k *Kernel) moved(up, down *relayDir) conn.Moved {
	var m conn.Moved
	m.KernelToServer, m.BacklogToServer = k.kernelBytes(up)
	m.KernelToClient, m.BacklogToClient = k.kernelBytes(down)
	m.ToServer = up.userBytes.Load() + m.KernelToServer
	m.ToClient = down.userBytes.Load() + m.KernelToClient
	return m
}

// kernelBytes is what the verdict redirected from d.src, and of it and
// userspace's writes what has not entered d.dst's send queue yet: measured
// on the socket, not taken from the verdict's own books, so that the
// number shows what the kernel really holds. Zero once d.dst is closed.
func (k *Kernel) kernelBytes(d *relayDir) (redirected, backlog int64) {
	if !d.inMap {
		return 0, 0
	}
	st, err := k.Maps.Dir(d.cookie)
	if err != nil {
		return 0, 0
	}
	redirected = int64(st.KernelBytes)
	if sent, _, err := sockopt.SentBytes(d.dst); err == nil {
		backlog = max(0, redirected+d.userBytes.Load()-int64(sent-min(sent, d.dstBase)))
	}
	return redirected, backlog
}

// readPooled reads what c holds now, taking a buffer from the pool only
// when there is something: a connection whose bytes the kernel moves sits
// idle in userspace and should hold no buffer (thousands of them would hold
// 128 KiB each). It returns errWouldBlock when c has nothing, io.EOF at EOF.
// The caller returns a non-nil buffer to relayBufs.
func readPooled(c *net.TCPConn) (bufp *[]byte, n int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		bufp = relayBufs.Get().(*[]byte)
		n, rerr = sockopt.RetryEINTR(func() (int, error) { return unix.Read(int(fd), *bufp) })
		if rerr == unix.EAGAIN {
			relayBufs.Put(bufp)
			bufp = nil
		}
		return true // never park here: the idle waiter does the waiting
	})
	switch {
	case err != nil:
	case rerr == unix.EAGAIN:
		err = errWouldBlock
	case rerr != nil:
		err = os.NewSyscallError("read", rerr)
	case n == 0:
		err = io.EOF
	}
	return bufp, max(n, 0), err
}

// pumpAsync runs d's pump in steps (runSteps): each step moves what reaches
// userspace from d.src (everything when src is not in the map) to d.dst
// behind the kernel's own redirects, and ends when src has nothing more; on
// EOF the last step half-closes d.dst once all bytes are in d.dst's send
// queue. fin gets the end, once.
func (k *Kernel) pumpAsync(ctx context.Context, d *relayDir, w *IdleWaiter, fin func(error)) {
	runSteps(ctx, w, d.src, &d.slot, func() error { return k.pump(ctx, d) }, fin)
}

// pump is one step of a direction: it returns errWouldBlock when d.src has
// nothing more for userspace, nil once d.dst was half-closed after EOF.
func (k *Kernel) pump(ctx context.Context, d *relayDir) error {
	eofWait := 50 * time.Microsecond
	for {
		d.phase.Store(phaseReading)
		bufp, n, err := readPooled(d.src)
		if err == errWouldBlock {
			d.phase.Store(phaseParked)
			return err
		}
		if n > 0 {
			buf := (*bufp)[:n]
			// While what userspace published is behind what the verdict had
			// passed at the last look, the verdict redirects nothing (order),
			// so there is nothing new to wait for and nothing to tell it:
			// under load this path is just read and write.
			if d.published >= d.seenPassed {
				d.phase.Store(phaseFlushing)
				if err := k.flushKernel(ctx, d); err != nil {
					relayBufs.Put(bufp)
					return err
				}
			}
			_, werr := d.dst.Write(buf)
			relayBufs.Put(bufp)
			if werr != nil {
				return werr
			}
			u := uint64(d.userBytes.Add(int64(n)))
			if d.inMap && u >= d.seenPassed {
				if err := k.Maps.SetUser(d.cookie, u); err != nil {
					return fmt.Errorf("publish user bytes: %w", err)
				}
				d.published = u
			}
		} else if bufp != nil {
			relayBufs.Put(bufp)
		}
		if errors.Is(err, io.EOF) {
			// EOF counts only once every byte TCP received on d.src went
			// through the verdict, and every byte the verdict left to
			// userspace was read: the FIN can overtake both (the passed ones
			// may wait in the psock's backlog, behind data redirected to
			// this socket).
			d.phase.Store(phaseEOFBooks)
			if pending, err := k.tailPending(d); err != nil {
				return err
			} else if pending {
				if err := sleepCtx(ctx, &eofWait); err != nil {
					return err
				}
				continue
			}
			d.phase.Store(phaseEOFFlush)
			if err := k.flushKernel(ctx, d); err != nil {
				return err
			}
			if err := k.endedByFIN(d); err != nil {
				return err
			}
			// Marked first: the peer's FIN can answer ours before Store.
			d.dstShut.Store(true)
			return d.dst.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}
