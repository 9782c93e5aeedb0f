package userspace

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

// KernelRelay moves a connection's bytes in the kernel: both sockets go into
// pepsal_relay and the sk_skb verdict redirects each side's data to the other.
// Userspace keeps three jobs, which make the mode safe:
//   - it moves what the verdict leaves on a socket (budget reached, order to
//     keep, peer not in the map), in order, after everything the kernel
//     redirected before it;
//   - it turns EOF into a half-close and an error into a reset, but only
//     once every byte redirected toward that socket is in its TCP send queue
//     (closing earlier would drop the psock's backlog: silent truncation);
//   - it relays in plain userspace the connections that cannot be inserted.
type KernelRelay struct {
	Log    *slog.Logger
	Maps   RelayMaps
	Budget uint64 // bytes redirected toward a socket and not yet in its send queue (the psock backlog)
	// OffloadAfter: a connection is relayed by splice until it has moved
	// this many bytes (both ways), then goes into the kernel (0: at once).
	// Putting sockets into the SOCKHASH and taking them out costs more CPU
	// than a short connection's bytes, and an idle connection in the map
	// costs its two psocks' memory for nothing.
	OffloadAfter int64

	// splice relays the connections the kernel cannot take, and those not
	// yet offloaded; its idle waiter is the kernel relay's too.
	splice splicer
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
	published   uint64    // user bytes last written to pepsal_relay_user
	unseenSince time.Time // since when, at EOF, received bytes wait for the verdict
	slot        idleSlot  // src in the idle waiter while nothing is there for userspace
}

// unseenLimit bounds the wait, at EOF, for received bytes to reach the verdict.
const unseenLimit = 5 * time.Second

// relayStart is what userspace did on the legs before the relay starts.
type relayStart struct {
	pre        int64       // client bytes already written to the server (fast open's first bytes)
	preDown    int64       // server bytes already written to the client (by splice, before the offload)
	clientRead int64       // bytes read from the client and not relayed (a warm path's header)
	serverRead int64       // bytes read from the server and not relayed (a warm path's hello)
	slots      [2]idleSlot // the sockets' registrations in the idle waiter, if any (up, down)
	offloaded  bool        // splice already ran: the kernel takes over now
	// beforeClose run right before the graceful close of the client and
	// the server leg (see spliceOpts), whichever relay closes them.
	beforeClose [2]func()
}

// relay moves the connection's bytes; the first pre bytes from the client
// were already written to the server by userspace (fast open). It returns
// the outcome once both sockets are closed.
func (k *KernelRelay) relay(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st relayStart) conn.Outcome {
	done := make(chan conn.Outcome, 1)
	k.relayAsync(ctx, c, client, server, st, func(o conn.Outcome) { done <- o })
	return <-done
}

// relayAsync is relay returning at once: done gets the outcome. No
// goroutine is held while the connection is idle (see splicer.relayAsync).
func (k *KernelRelay) relayAsync(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st relayStart, done func(conn.Outcome)) {
	w := k.splice.idle // nil: each direction parks a goroutine instead
	if k.OffloadAfter > 0 && !st.offloaded && w != nil {
		c.SetRelay(conn.RelayState{Via: conn.SpliceUntilOffload})
		k.splice.relayWith(ctx, c, client, server, done, spliceOpts{
			offloadAfter: k.OffloadAfter,
			beforeClose:  st.beforeClose,
			offload: func(up, down int64, slots [2]idleSlot) {
				st.pre += up
				st.preDown += down
				st.slots, st.offloaded = slots, true
				k.relayAsync(ctx, c, client, server, st, done)
			},
		})
		return
	}
	k.relayNow(ctx, c, client, server, st, done)
}

// relayNow puts the connection into the kernel relay.
func (k *KernelRelay) relayNow(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st relayStart, done func(conn.Outcome)) {
	w := k.splice.idle
	pre := st.pre
	fallback := func(done func(conn.Outcome)) {
		k.splice.relayWith(ctx, c, client, server, done, spliceOpts{slots: st.slots, beforeClose: st.beforeClose})
	}
	clientCookie, err1 := sockopt.Cookie(client)
	serverCookie, err2 := sockopt.Cookie(server)
	if err := errors.Join(err1, err2); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		fallback(done)
		return
	}
	// A socket that already got its peer's FIN cannot be inserted; read
	// the state first, and keep the whole connection in userspace then.
	for _, s := range []struct {
		who  string
		conn *net.TCPConn
	}{{"client", client}, {"server", server}} {
		if st := sockopt.TCPState(s.conn); st != unix.BPF_TCP_ESTABLISHED {
			c.SetRelay(conn.Fallback(conn.ClosedBeforeInsert, s.who+" closed before insert"))
			fallback(done)
			return
		}
	}
	// TCP_INFO's bytes_acked counts sequence space: on the dialed server
	// leg it includes the SYN. Taken for data, that one byte made the relay
	// shut the server leg down while the last byte still waited in the psock
	// backlog (a silent truncation). Measured here, before any relayed byte.
	clientBase, err1 := seqBase(client, uint64(st.preDown))
	serverBase, err2 := seqBase(server, uint64(pre))
	if err := errors.Join(err1, err2); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		fallback(done)
		return
	}
	if err := k.Maps.Prepare(
		loader.RelaySide{Cookie: clientCookie, Pre: uint64(pre), SeqBase: clientBase},
		loader.RelaySide{Cookie: serverCookie, Pre: uint64(st.preDown), SeqBase: serverBase},
		k.Budget); err != nil {
		c.SetRelay(conn.Fallback(conn.SetupFailed, err.Error()))
		fallback(done)
		return
	}
	up := &relayDir{src: client, dst: server, cookie: clientCookie, dstBase: serverBase, srcSkip: uint64(st.clientRead)}
	up.userBytes.Store(pre)
	up.published = uint64(pre)
	up.slot = st.slots[0]
	down := &relayDir{src: server, dst: client, cookie: serverCookie, dstBase: clientBase, srcSkip: uint64(st.serverRead), slot: st.slots[1]}
	down.userBytes.Store(st.preDown)
	down.published = uint64(st.preDown)
	up.peer, down.peer = down, up
	if err := sockopt.WithFD(client, func(fd int) error { return k.Maps.Insert(clientCookie, fd) }); err != nil {
		c.SetRelay(conn.Fallback(conn.InsertFailed, "client: "+err.Error()))
		fallback(func(o conn.Outcome) {
			k.Maps.Forget(clientCookie, serverCookie)
			done(o)
		})
		return
	}
	up.inMap = true
	c.SetRelay(conn.RelayState{Via: conn.Kernel})
	// From here the client is in the map for good (removing it would drop
	// whatever the verdict left on it), so a failure below keeps it there
	// and relays through it in userspace.
	if err := sockopt.WithFD(server, func(fd int) error { return k.Maps.Insert(serverCookie, fd) }); err != nil {
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
		c.SetMoved(k.moved(up, down))
		k.Maps.Forget(clientCookie, serverCookie)
		if aborted.Load() { // both legs already reset
			done(conn.WasReset)
			return
		}
		closeGracefully(client, st.beforeClose[0])
		closeGracefully(server, st.beforeClose[1])
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
// and how many of them the kernel moved.
func (k *KernelRelay) moved(up, down *relayDir) conn.Moved {
	kernel := func(d *relayDir) int64 {
		if d.inMap {
			if st, err := k.Maps.Dir(d.cookie); err == nil {
				return int64(st.KernelBytes)
			}
		}
		return 0
	}
	m := conn.Moved{KernelToServer: kernel(up), KernelToClient: kernel(down)}
	m.ToServer = up.userBytes.Load() + m.KernelToServer
	m.ToClient = down.userBytes.Load() + m.KernelToClient
	return m
}

var relayBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

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
func (k *KernelRelay) pumpAsync(ctx context.Context, d *relayDir, w *idleWaiter, fin func(error)) {
	runSteps(ctx, w, d.src, &d.slot, func() error { return k.pump(ctx, d) }, fin)
}

// pump is one step of a direction: it returns errWouldBlock when d.src has
// nothing more for userspace, nil once d.dst was half-closed after EOF.
func (k *KernelRelay) pump(ctx context.Context, d *relayDir) error {
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

// flushKernel waits until every byte the kernel redirected from d.src, and
// every byte userspace wrote, has entered d.dst's TCP send queue: only then
// may userspace write after them, or shut d.dst down, without reordering or
// dropping the psock backlog.
func (k *KernelRelay) flushKernel(ctx context.Context, d *relayDir) error {
	if !d.inMap {
		return nil
	}
	st, err := k.Maps.Dir(d.cookie)
	if err != nil {
		return fmt.Errorf("read relay state: %w", err)
	}
	d.seenPassed = st.PassedBytes
	// Nothing redirected since the last wait: userspace's own writes are in
	// order by construction.
	if st.KernelBytes == d.flushed {
		return nil
	}
	want := st.KernelBytes + uint64(d.userBytes.Load())
	wait := 50 * time.Microsecond
	for {
		written, state, err := sockopt.SentBytes(d.dst)
		if err != nil {
			return err
		}
		if written >= want+d.dstBase {
			d.flushed = st.KernelBytes
			return nil
		}
		if state != unix.BPF_TCP_ESTABLISHED && state != unix.BPF_TCP_CLOSE_WAIT {
			return fmt.Errorf("destination socket left ESTABLISHED (state %d) with %d bytes unsent", state, want+d.dstBase-written)
		}
		if err := sleepCtx(ctx, &wait); err != nil {
			return err
		}
	}
}

// tailPending says whether d.src still holds bytes userspace must move
// before it may act on EOF: bytes TCP received that the verdict has not seen
// yet, or bytes the verdict left to userspace that were not read yet.
func (k *KernelRelay) tailPending(d *relayDir) (bool, error) {
	if !d.inMap {
		return false, nil
	}
	b, err := k.books(d)
	if err != nil {
		return false, err
	}
	if b.seen > b.received {
		// received assumes a FIN: a stream that has all its bytes seen
		// and one more than that was ended by a reset (a psock's read
		// can report the reset as EOF, when the kernel's own send of
		// redirected bytes on this socket took the error first).
		return false, errResetNotFIN
	}
	var late uint64 // bytes the books still wait for
	switch user := uint64(d.userBytes.Load()); {
	case b.seen < b.received:
		// The verdict runs from the socket's data_ready, right behind
		// TCP, so this lasts microseconds.
		late = b.received - b.seen
	case b.dir.PassedBytes > user:
		// Left to userspace and not read yet: they wait in the psock's
		// queue, which a reset empties for good.
		late = b.dir.PassedBytes - user
	default:
		d.unseenSince = time.Time{}
		return false, nil
	}
	// If the wait ever lasted, the books would be wrong: reset the
	// connection rather than guess, never a clean FIN after a truncated
	// stream.
	if d.unseenSince.IsZero() {
		d.unseenSince = time.Now()
	} else if time.Since(d.unseenSince) > unseenLimit {
		return false, fmt.Errorf("%d bytes received never reached userspace or the verdict", late)
	}
	return true, nil
}

// errResetNotFIN: d.src read EOF, but its peer reset the connection.
var errResetNotFIN = fmt.Errorf("connection reset by peer (read as EOF): %w", unix.ECONNRESET)

// endedByFIN checks, right before d.dst is half-closed, that the EOF read
// on d.src was a FIN. A socket that got its peer's FIN, and was not shut
// down by us, waits in CLOSE_WAIT; one in CLOSE was reset. Once we had
// shut it down both end in CLOSE, and the books tell them apart: a FIN is
// one more than the data in TCP's count of received sequence space.
func (k *KernelRelay) endedByFIN(d *relayDir) error {
	if !d.inMap {
		return nil // read by plain recv, which returns the reset itself
	}
	if d.peer == nil || !d.peer.dstShut.Load() {
		if sockopt.TCPState(d.src) == unix.BPF_TCP_CLOSE {
			return errResetNotFIN
		}
		return nil
	}
	// Read again: the flush since tailPending may have taken time, and a
	// reset since then would show here.
	b, err := k.books(d)
	if err != nil {
		return err
	}
	if b.seen > b.received {
		return errResetNotFIN
	}
	return nil
}

// relayBooks is d.src's stream at EOF: what its TCP received, and what of
// it the verdict or userspace's own reads account for.
type relayBooks struct {
	received uint64          // data bytes received, assuming a FIN (sockopt.DataReceived)
	seen     uint64          // kernel + passed + read and not relayed (srcSkip)
	dir      loader.RelayDir // the verdict's counters behind seen
}

// books reads received first, the verdict's counters second: the verdict
// only ever catches up, so a byte counted as received and not yet as seen
// keeps the caller waiting, never the other way round.
func (k *KernelRelay) books(d *relayDir) (relayBooks, error) {
	received, err := sockopt.DataReceived(d.src)
	if err != nil {
		return relayBooks{}, err
	}
	st, err := k.Maps.Dir(d.cookie)
	if err != nil {
		return relayBooks{}, fmt.Errorf("read relay state: %w", err)
	}
	return relayBooks{received: received, seen: st.KernelBytes + st.PassedBytes + d.srcSkip, dir: st}, nil
}

// sleepCtx sleeps *wait, doubling it up to 10 ms for the next call: these
// waits are on the kernel's backlog worker, usually short.
func sleepCtx(ctx context.Context, wait *time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(*wait):
	}
	*wait = min(*wait*2, 10*time.Millisecond)
	return nil
}

// seqBase is the part of sockopt.SentBytes(c) that is not data, given that
// userspace wrote written bytes into it so far (nothing was relayed yet).
func seqBase(c *net.TCPConn, written uint64) (uint64, error) {
	sent, _, err := sockopt.SentBytes(c)
	if err != nil {
		return 0, err
	}
	if sent < written { // not expected; never let the base go negative
		return 0, nil
	}
	return sent - written, nil
}
