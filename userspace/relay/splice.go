// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// Splice moves bytes both ways with splice(2) between two *net.TCPConn,
// keeping TCP semantics end to end:
//   - EOF from one side becomes shutdown(SHUT_WR) on the other, after every
//     byte read before it has been written; the other direction keeps flowing;
//   - an error on either side (a reset, a write to a closed peer) resets both.
//
// The relay ends once both directions are finished and both sockets are
// closed: reset on error, else closed with SO_LINGER off so that queued
// bytes still leave, whatever linger the relay ran with.
//
// Its fields are what it borrows from the daemon; the kernel relay shares
// them for its fallback and the splice before an offload.
type Splice struct {
	Pipes  *Pipes
	Waiter *IdleWaiter // starts a direction's next step; nil: each direction parks a goroutine
}

// Via is conn.Splice.
func (Splice) Via() conn.Via { return conn.Splice }

// Start relays holding no goroutine while the connection is idle: the idle
// waiter starts one for a direction when its source is readable (without
// a waiter each direction parks a goroutine instead). It returns at once;
// done gets the outcome, once both sockets are closed. Whoever cancels ctx
// must also close the sockets (the pipeline resets both). Of st, only
// BeforeClose matters here.
func (s Splice) Start(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, st Setup, done func(conn.Outcome)) {
	s.relayWith(ctx, c, client, server, done, spliceOpts{beforeClose: st.BeforeClose})
}

// spliceRun is one connection in the splice relay: its two directions and,
// when one is asked for, the hand-over to another relay (offload.go).
type spliceRun struct {
	Splice
	ctx            context.Context // the relay's: canceled when it ends or aborts
	cancel         context.CancelFunc
	c              *conn.Conn
	client, server *net.TCPConn
	done           func(conn.Outcome)
	opt            spliceOpts
	slots          [2]idleSlot // the directions' registrations in the idle waiter (up, down)
	stopWake       func() bool
	abortOnce      sync.Once
	aborted        atomic.Bool
	left           atomic.Int32 // directions not finished
	handover
}

// relayWith is Start with what a relay handed over from, or to, another
// brings.
func (s Splice) relayWith(ctx context.Context, c *conn.Conn, client, server *net.TCPConn, done func(conn.Outcome), opt spliceOpts) {
	r := &spliceRun{Splice: s, c: c, client: client, server: server, done: done, opt: opt, slots: opt.slots}
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.stopWake = func() bool { return false }
	if w := s.Waiter; w != nil {
		r.stopWake = context.AfterFunc(r.ctx, func() { w.wake(&r.slots[0]); w.wake(&r.slots[1]) })
	}
	r.left.Store(2)
	r.octx, r.ocancel = context.WithCancel(r.ctx)
	if opt.offload == nil || s.Waiter == nil {
		r.ostate = offloadOff
		r.octx = r.ctx
	}
	up := func(n int64) { c.AddMoved(n, 0) }
	down := func(n int64) { c.AddMoved(0, n) }
	upEOF := c.ClientHalfClosed
	downEOF := c.ServerHalfClosed
	r.resume[0] = func() { r.direction(r.ctx, 0, server, client, up, upEOF) }
	r.resume[1] = func() { r.direction(r.ctx, 1, client, server, down, downEOF) }
	r.direction(r.octx, 0, server, client, up, upEOF)
	r.direction(r.octx, 1, client, server, down, downEOF)
}

// abort resets both legs, once; the relay ends as reset.
func (r *spliceRun) abort() {
	r.abortOnce.Do(func() {
		r.aborted.Store(true)
		r.cancel() // wakes the other direction if it waits in the idle waiter
		sockopt.Reset(r.client)
		sockopt.Reset(r.server)
	})
}

// finished is called once per direction; the last one ends the relay.
func (r *spliceRun) finished() {
	if r.left.Add(-1) != 0 {
		return
	}
	r.stopWake()
	r.cancel()
	if r.aborted.Load() {
		r.done(conn.WasReset)
		return
	}
	closeGracefully(r.client, r.opt.beforeClose[0])
	closeGracefully(r.server, r.opt.beforeClose[1])
	r.done(conn.Completed)
}

// direction moves src's bytes to dst in steps until EOF or an error, or
// until it stops for the hand-over (dctx is then octx, not ctx).
func (r *spliceRun) direction(dctx context.Context, i int, dst, src *net.TCPConn, count func(int64), eof func()) {
	var stop func() bool
	if dctx != r.ctx { // may be handed over: stop a busy step for it
		stop = r.asked.Load
	}
	step := func() error {
		first := true
		return spliceStepUntil(r.Pipes, dst, src, func(n int64) {
			count(n)
			r.moved[i].Add(n)
			if dctx != r.ctx {
				if first {
					first = false
					r.steps.Add(1)
				}
				r.ask()
			}
		}, stop)
	}
	runSteps(dctx, r.Waiter, src, &r.slots[i], step, func(err error) { r.end(i, dst, eof, err) })
}

// end is how direction i ended: stopped for the hand-over, EOF (nil: dst is
// half-closed) or an error (both legs are reset).
func (r *spliceRun) end(i int, dst *net.TCPConn, eof func(), err error) {
	if r.stoppedForHandover(i, err) {
		return
	}
	defer r.finished()
	if err != nil {
		r.abort()
		return
	}
	eof()
	if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
		r.abort()
	}
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
func spliceStepUntil(pipes *Pipes, dst, src *net.TCPConn, count func(int64), stop func() bool) error {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	for {
		pc, err := pipes.readPiece(srcRC)
		if err == errWouldBlock {
			return err
		}
		err = pipes.writePiece(pc, err, dst, dstRC, count)
		switch {
		case err != nil:
			return err
		case pc.n == 0:
			return nil // EOF
		case stop != nil && stop() && sockopt.QueueEmpty(srcRC):
			// Only with nothing left unread: a read may end inside an
			// skb, and the kernel relay, reading the receive queue skb by
			// skb, would hand the whole skb to its verdict again.
			return errWouldBlock
		}
	}
}

// piece is what one read from a source holds: bytes in a pipe, or in a
// buffer when no pipe could be had.
type piece struct {
	p    *pipe
	bufp *[]byte
	n    int
}

// readPiece reads what the socket behind srcRC holds into a pipe (a
// buffer when none can be had); errWouldBlock when it holds nothing.
func (pp *Pipes) readPiece(srcRC syscall.RawConn) (piece, error) {
	var (
		pc    piece
		serr  error
		empty bool // nothing to read now
	)
	err := srcRC.Read(func(fd uintptr) bool {
		// An idle pipe is free to try with; a new one is made only for
		// bytes that are there, or an idle connection would cost one.
		if pc.p = pp.idlePipe(); pc.p == nil {
			if !sockopt.Readable(int(fd)) {
				empty = true
				return true // never park here: the caller waits
			}
			var perr error
			if pc.p, perr = pp.get(); perr != nil {
				// Out of fds: move these bytes through a buffer rather
				// than fail a connection that works.
				pc.bufp = relayBufs.Get().(*[]byte)
				pc.n, serr = sockopt.RetryEINTR(func() (int, error) { return unix.Read(int(fd), *pc.bufp) })
				if serr == unix.EAGAIN {
					relayBufs.Put(pc.bufp)
					pc.bufp, empty = nil, true
				}
				return true
			}
		}
		pc.n, serr = sockopt.RetryEINTR(func() (int, error) { return splice(int(fd), pc.p.w, pc.p.size) })
		if serr == unix.EAGAIN {
			pp.put(pc.p)
			pc.p, empty = nil, true
		}
		return true
	})
	if err == nil && empty {
		return pc, errWouldBlock
	}
	if err == nil && serr != nil {
		op := "splice"
		if pc.bufp != nil {
			op = "read"
		}
		err = os.NewSyscallError(op, serr)
	}
	return pc, err
}

// writePiece writes what pc holds to dst, unless the read failed (err),
// and gives the pipe or buffer back. It returns the read's or the write's
// error.
func (pp *Pipes) writePiece(pc piece, err error, dst *net.TCPConn, dstRC syscall.RawConn, count func(int64)) error {
	if pc.bufp != nil {
		if err == nil && pc.n > 0 {
			var m int
			m, err = dst.Write((*pc.bufp)[:pc.n])
			count(int64(m))
		}
		relayBufs.Put(pc.bufp)
	}
	if pc.p != nil {
		if err == nil && pc.n > 0 {
			pc.p.data = pc.n
			err = pc.p.drainTo(dstRC, count)
		}
		pp.put(pc.p) // closed, not pooled, if bytes were left in it
	}
	return err
}
