package userspace

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// splicer is the splice relay, with what it borrows from: the splitter's
// pipe pool and idle waiter.
type splicer struct {
	pipes *pipePool
	idle  *idleWaiter // starts a direction's next step; nil: each direction parks a goroutine
}

// relay moves bytes both ways with splice(2) between two *net.TCPConn,
// keeping TCP semantics end to end:
//   - EOF from one side becomes shutdown(SHUT_WR) on the other, after every
//     byte read before it has been written; the other direction keeps flowing;
//   - an error on either side (a reset, a write to a closed peer) resets both.
//
// It returns once both directions are finished and both sockets are closed:
// reset on error, else closed with SO_LINGER off so that queued bytes still
// leave, whatever linger the relay ran with.
// Each direction parks a goroutine meanwhile (the idle waiter is left out).
func (sp splicer) relay(c *conn.Conn, client, server *net.TCPConn, opt spliceOpts) conn.Outcome {
	done := make(chan conn.Outcome, 1)
	parked := splicer{pipes: sp.pipes}
	parked.relayWith(context.Background(), c, client, server, func(o conn.Outcome) { done <- o }, opt)
	return <-done
}

// relayAsync is relay holding no goroutine while the connection is idle:
// the idle waiter starts one for a direction when its source is readable
// (without a waiter each direction parks a goroutine instead). It returns
// at once; done gets the outcome, once both sockets are closed. Whoever
// cancels ctx must also close the sockets (the splitter resets both).
func (sp splicer) relayAsync(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, done func(conn.Outcome)) {
	sp.relayWith(ctx, c, client, server, done, spliceOpts{})
}

// spliceOpts are what a relay handed over from, or to, another brings.
type spliceOpts struct {
	// slots are the directions' registrations in the idle waiter (up, down)
	// when another relay already registered the sockets.
	slots [2]idleSlot
	// offload, if set, takes the connection over once the relay has moved
	// offloadAfter bytes (both ways) or made offloadSteps steps that moved
	// bytes: it is called with both directions
	// stopped between steps, every byte read written, and gets what each
	// direction moved and the registrations; it owns the connection then.
	offload      func(up, down int64, slots [2]idleSlot)
	offloadAfter int64
	// beforeClose run right before the graceful close of the client and
	// the server leg (nil: nothing to run): the gateway's pacing books a
	// warm flow's last bytes while its socket can still be read.
	beforeClose [2]func()
}

// offloadSteps: a connection that exchanged this many messages (steps that
// moved bytes, both ways) is handed over whatever its bytes: a long-lived
// connection of small requests is where the kernel relay's shorter round
// trips pay.
const offloadSteps = 16

func (sp splicer) relayWith(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, done func(conn.Outcome), opt spliceOpts) {
	w := sp.idle
	ctx, cancel := context.WithCancel(ctx)
	var abortOnce sync.Once
	var aborted atomic.Bool
	abort := func() {
		abortOnce.Do(func() {
			aborted.Store(true)
			cancel() // wakes the other direction if it waits in the idle waiter
			sockopt.Reset(client)
			sockopt.Reset(server)
		})
	}
	slots := opt.slots
	stopWake := func() bool { return false }
	if w != nil {
		stopWake = context.AfterFunc(ctx, func() { w.wake(&slots[0]); w.wake(&slots[1]) })
	}
	var left atomic.Int32
	left.Store(2)
	finished := func() { // once per direction; the last one ends the relay
		if left.Add(-1) != 0 {
			return
		}
		stopWake()
		cancel()
		if aborted.Load() {
			done(conn.WasReset)
			return
		}
		closeGracefully(client, opt.beforeClose[0])
		closeGracefully(server, opt.beforeClose[1])
		done(conn.Completed)
	}

	// The hand-over: once enough bytes moved, each direction stops after
	// its next step (ask cancels octx, the directions' context, and wakes
	// them; runSteps wakes a direction that armed meanwhile); when both have
	// stopped, the connection goes to opt.offload. A direction that ends
	// (EOF, an error) first calls it off and resumes the other on ctx.
	const (
		offloadNone = iota
		offloadAsked
		offloadOff // called off, or done
	)
	octx, ocancel := context.WithCancel(ctx)
	var (
		omu     sync.Mutex
		ostate  = offloadNone
		stopped [2]bool
		moved   [2]atomic.Int64
		asked   atomic.Bool  // ostate went to offloadAsked
		steps   atomic.Int64 // steps that moved bytes, both directions
	)
	if opt.offload == nil || w == nil {
		ostate = offloadOff
		octx = ctx
	}
	ask := func() {
		if moved[0].Load()+moved[1].Load() < opt.offloadAfter && steps.Load() < offloadSteps {
			return
		}
		omu.Lock()
		if ostate != offloadNone {
			omu.Unlock()
			return
		}
		ostate = offloadAsked
		asked.Store(true)
		omu.Unlock()
		ocancel()
		w.wake(&slots[0])
		w.wake(&slots[1])
	}
	var resume [2]func()
	pipe := func(dctx context.Context, i int, dst, src *net.TCPConn, count func(int64), eof func()) {
		var stop func() bool
		if dctx != ctx { // may be handed over: stop a busy step for it
			stop = asked.Load
		}
		step := func() error {
			first := true
			return spliceStepUntil(sp.pipes, dst, src, func(n int64) {
				count(n)
				moved[i].Add(n)
				if dctx != ctx {
					if first {
						first = false
						steps.Add(1)
					}
					ask()
				}
			}, stop)
		}
		runSteps(dctx, w, src, &slots[i], step, func(err error) {
			omu.Lock()
			if errors.Is(err, context.Canceled) && ctx.Err() == nil {
				// octx was canceled: stopped for the hand-over.
				if ostate != offloadAsked { // called off meanwhile
					omu.Unlock()
					resume[i]()
					return
				}
				stopped[i] = true
				both := stopped[0] && stopped[1]
				if both {
					ostate = offloadOff
				}
				omu.Unlock()
				if both {
					stopWake()
					cancel()
					opt.offload(moved[0].Load(), moved[1].Load(), slots)
				}
				return
			}
			other := 1 - i
			resumeOther := ostate == offloadAsked && stopped[other]
			stopped[other] = false
			ostate = offloadOff
			omu.Unlock()
			if resumeOther {
				resume[other]()
			}
			defer finished()
			if err != nil {
				abort()
				return
			}
			eof()
			if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				abort()
			}
		})
	}
	up := func(n int64) { c.AddMoved(n, 0) }
	down := func(n int64) { c.AddMoved(0, n) }
	upEOF := c.ClientHalfClosed
	downEOF := c.ServerHalfClosed
	resume[0] = func() { pipe(ctx, 0, server, client, up, upEOF) }
	resume[1] = func() { pipe(ctx, 1, client, server, down, downEOF) }
	pipe(octx, 0, server, client, up, upEOF)
	pipe(octx, 1, client, server, down, downEOF)
}

// closeGracefully ends a relay that finished cleanly: SO_LINGER off first,
// so that close() lets queued bytes leave and the FIN (already sent by the
// half-closes) stands, instead of the RST sockopt.ResetOnCrash armed.
// before, if not nil, runs first, while the socket is still open.
func closeGracefully(c *net.TCPConn, before func()) {
	if before != nil {
		before()
	}
	_ = c.SetLinger(-1)
	_ = c.Close()
}

// spliceStepUntil moves src's bytes to dst until src has none
// (errWouldBlock), EOF (nil) or an error, or until stop (if not nil) says so
// between two pieces, when every byte read was written and src has no
// unread byte (errWouldBlock): a busy source would otherwise keep a step
// going to its EOF. Unlike io.Copy,
// which keeps two 1 MiB pipes per connection for its whole life, it takes a
// pipe from pipes only to move the bytes at hand, and gives it back empty.
// count gets the bytes written to dst as they go.
func spliceStepUntil(pipes *pipePool, dst, src *net.TCPConn, count func(int64), stop func() bool) error {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var (
			p     *pipe
			bufp  *[]byte // when no pipe can be had
			n     int
			serr  error
			empty bool // nothing to read now
		)
		err := srcRC.Read(func(fd uintptr) bool {
			// An idle pipe is free to try with; a new one is made only for
			// bytes that are there, or an idle connection would cost one.
			if p = pipes.idlePipe(); p == nil {
				if !sockopt.Readable(int(fd)) {
					empty = true
					return true // never park here: the caller waits
				}
				var perr error
				if p, perr = pipes.get(); perr != nil {
					// Out of fds: move these bytes through a buffer rather
					// than fail a connection that works.
					bufp = relayBufs.Get().(*[]byte)
					n, serr = sockopt.RetryEINTR(func() (int, error) { return unix.Read(int(fd), *bufp) })
					if serr == unix.EAGAIN {
						relayBufs.Put(bufp)
						bufp, empty = nil, true
					}
					return true
				}
			}
			n, serr = sockopt.RetryEINTR(func() (int, error) { return splice(int(fd), p.w, p.size) })
			if serr == unix.EAGAIN {
				pipes.put(p)
				p, empty = nil, true
			}
			return true
		})
		if err == nil && empty {
			return errWouldBlock
		}
		if err == nil && serr != nil {
			op := "splice"
			if bufp != nil {
				op = "read"
			}
			err = os.NewSyscallError(op, serr)
		}
		if bufp != nil {
			if err == nil && n > 0 {
				var m int
				m, err = dst.Write((*bufp)[:n])
				count(int64(m))
			}
			relayBufs.Put(bufp)
		}
		if p != nil {
			if err == nil && n > 0 {
				p.data = n
				err = p.drainTo(dstRC, count)
			}
			pipes.put(p) // closed, not pooled, if bytes were left in it
		}
		switch {
		case err != nil:
			return err
		case n == 0:
			return nil // EOF
		case stop != nil && stop() && sockopt.QueueEmpty(srcRC):
			// Only with nothing left unread: a read may end inside an
			// skb, and the kernel relay, reading the receive queue skb by
			// skb, would hand the whole skb to its verdict again.
			return errWouldBlock
		}
	}
}

// drainTo writes everything in the pipe to the socket behind rc.
func (p *pipe) drainTo(rc syscall.RawConn, count func(int64)) error {
	for p.data > 0 {
		var m int
		var serr error
		err := rc.Write(func(fd uintptr) bool {
			m, serr = sockopt.RetryEINTR(func() (int, error) { return splice(p.r, int(fd), p.data) })
			return serr != unix.EAGAIN
		})
		if err == nil && serr != nil {
			err = os.NewSyscallError("splice", serr)
		}
		if err != nil {
			return err
		}
		if m <= 0 {
			return io.ErrNoProgress
		}
		p.data -= m
		count(int64(m))
	}
	return nil
}

func splice(from, to, n int) (int, error) {
	m, err := unix.Splice(from, nil, to, nil, n, unix.SPLICE_F_NONBLOCK)
	return int(m), err
}

const (
	// pipeSize is the capacity asked for each pipe, as Go's runtime does:
	// one splice moves up to that much. Slots only cost memory while they
	// hold bytes, and only moving connections hold a pipe.
	pipeSize = 1 << 20
	// pipeIdleMax bounds the empty pipes kept for the next burst, and
	// pipeIdleTTL how long one is kept unused: a quiet daemon holds none.
	pipeIdleMax = 32
	pipeIdleTTL = time.Second
)

// pipe is a splice pipe; data is how many bytes it holds.
type pipe struct {
	r, w      int
	size      int
	data      int
	idleSince time.Time
}

// pipePool lends pipes to bursts of splicing. Only empty pipes come back to
// it: bytes left in a pipe belong to one connection and must never reach
// another. The zero value is a pool without a limit.
type pipePool struct {
	mu    sync.Mutex
	idle  []*pipe // oldest first; lent from the end
	sweep *time.Timer
	open  atomic.Int64 // pipes open, idle or lent
	// limit bounds the pipes open at once (0: unbounded), so that pipes
	// never take the fds accept and dial need: get fails past it and the
	// relay copies through a buffer instead.
	limit atomic.Int64
}

// setLimit sets the bound (PipeLimit of the daemon's --max-conns).
func (pp *pipePool) setLimit(n int) { pp.limit.Store(int64(n)) }

// errPipeLimit is what get returns past the bound.
var errPipeLimit = errors.New("splice pipe limit reached")

// allowed says whether one more pipe may be opened.
func (pp *pipePool) allowed() bool {
	l := pp.limit.Load()
	return l <= 0 || pp.open.Load() < l
}

// idlePipe lends an idle pipe, or returns nil when there is none.
func (pp *pipePool) idlePipe() *pipe {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	n := len(pp.idle)
	if n == 0 {
		return nil
	}
	p := pp.idle[n-1]
	pp.idle[n-1] = nil
	pp.idle = pp.idle[:n-1]
	return p
}

// get lends an idle pipe or makes a new one.
func (pp *pipePool) get() (*pipe, error) {
	if p := pp.idlePipe(); p != nil {
		return p, nil
	}
	if !pp.allowed() { // keep the fds accept and dial need (--max-conns)
		return nil, errPipeLimit
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	pp.open.Add(1)
	// Past fs.pipe-user-pages-soft an unprivileged user may not grow a
	// pipe: the default capacity still works, in smaller steps.
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil {
		pp.close(p)
		return nil, os.NewSyscallError("fcntl F_GETPIPE_SZ", err)
	}
	p.size = size
	return p, nil
}

// put takes a pipe back: kept for the next burst if empty and there is room,
// else closed.
func (pp *pipePool) put(p *pipe) {
	if p.data != 0 {
		pp.close(p)
		return
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if len(pp.idle) >= pipeIdleMax {
		pp.close(p)
		return
	}
	p.idleSince = time.Now()
	pp.idle = append(pp.idle, p)
	if pp.sweep == nil {
		pp.sweep = time.AfterFunc(pipeIdleTTL, pp.closeIdle)
	}
}

// closeIdle closes the pipes unused for pipeIdleTTL and comes back for the
// others while any is left.
func (pp *pipePool) closeIdle() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	cutoff := time.Now().Add(-pipeIdleTTL)
	old := 0
	for old < len(pp.idle) && !pp.idle[old].idleSince.After(cutoff) {
		pp.close(pp.idle[old])
		old++
	}
	n := copy(pp.idle, pp.idle[old:])
	clear(pp.idle[n:])
	pp.idle = pp.idle[:n]
	if n == 0 {
		pp.sweep = nil
		return
	}
	pp.sweep.Reset(time.Until(pp.idle[0].idleSince.Add(pipeIdleTTL)))
}

func (pp *pipePool) close(p *pipe) {
	unix.Close(p.r)
	unix.Close(p.w)
	pp.open.Add(-1)
}
