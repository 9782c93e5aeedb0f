// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// IdleWaiter waits for thousands of idle sockets with no goroutine each: one
// epoll loop (EPOLLONESHOT, level-triggered) starts a goroutine for a socket
// only when it becomes readable (bytes, EOF, an error) or when its waiter is
// woken on purpose. An idle kernel-relayed connection otherwise parks a
// goroutine per direction, and a goroutine's stack is most of what it costs.
type IdleWaiter struct {
	epfd      int
	log       *slog.Logger
	loopDone  chan struct{} // closed once the loop has returned
	closeOnce sync.Once
	closeErr  error

	mu   sync.Mutex
	next uint64
	fns  map[uint64]func() // armed sockets: what to run when readable
}

// stopID is the id of the event that ends the loop (Close); the slots'
// ids start at 1.
const stopID = 0

// NewIdleWaiter starts a waiter whose loop logs to log. A daemon makes one
// at start (its epoll fd is the daemon's for good) and closes it once no
// relay uses it.
func NewIdleWaiter(log *slog.Logger) (*IdleWaiter, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	w := &IdleWaiter{epfd: epfd, log: log, loopDone: make(chan struct{}), fns: map[uint64]func(){}}
	go w.loop()
	return w, nil
}

// Close ends the loop and closes the epoll set. Functions still armed
// never run: close the waiter once no relay uses it. The loop is woken by
// an eventfd made for the purpose, so that a running waiter holds no
// descriptor but its epoll set.
func (w *IdleWaiter) Close() error {
	w.closeOnce.Do(func() {
		stop, err := unix.Eventfd(1, unix.EFD_CLOEXEC) // readable from the start
		if err != nil {
			w.closeErr = fmt.Errorf("stop the idle socket waiter: %w", os.NewSyscallError("eventfd", err))
			return
		}
		defer unix.Close(stop)
		ev := unix.EpollEvent{Events: unix.EPOLLIN} // id stopID: Fd and Pad 0
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, stop, &ev); err != nil {
			w.closeErr = fmt.Errorf("stop the idle socket waiter: %w", os.NewSyscallError("epoll_ctl", err))
			return
		}
		<-w.loopDone
		w.closeErr = os.NewSyscallError("close", unix.Close(w.epfd))
	})
	return w.closeErr
}

// slot is one socket's registration; the zero value is not registered.
type idleSlot struct {
	id    uint64
	added bool // in the epoll set (disarmed between events)
}

// arm runs fn on a new goroutine once fd is readable, or once wake(slot) is
// called, whichever comes first; exactly once either way. The caller holds
// fd open meanwhile (or wakes the slot before it closes it).
func (w *IdleWaiter) arm(s *idleSlot, fd int, fn func()) error {
	// Under the lock from start to end: the event can come at once, and the
	// step it starts can arm again before this call has returned.
	w.mu.Lock()
	defer w.mu.Unlock()
	if s.id == 0 {
		w.next++
		s.id = w.next
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	// The id travels in the event's 64-bit data (Fd and Pad): fd numbers
	// are reused, ids are not.
	ev.Fd, ev.Pad = int32(uint32(s.id)), int32(uint32(s.id>>32))
	op := unix.EPOLL_CTL_MOD
	if !s.added {
		op = unix.EPOLL_CTL_ADD
	}
	if err := unix.EpollCtl(w.epfd, op, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	s.added = true
	w.fns[s.id] = fn
	return nil
}

// wake runs the slot's fn now if it is armed (a reset or a drain must reach
// directions that wait on sockets about to be closed: closing a socket takes
// it out of the epoll set without an event).
func (w *IdleWaiter) wake(s *idleSlot) {
	w.mu.Lock()
	fn, ok := w.fns[s.id]
	delete(w.fns, s.id)
	w.mu.Unlock()
	if ok {
		go fn()
	}
}

func (w *IdleWaiter) loop() {
	defer close(w.loopDone)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not expected; every armed socket would hang, so say it loudly.
			w.log.Error("idle socket waiter stopped", "err", fmt.Errorf("epoll_wait: %w", err))
			return
		}
		stopped := false
		w.mu.Lock()
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == stopID {
				stopped = true
				continue
			}
			if fn, ok := w.fns[id]; ok { // else woken already
				delete(w.fns, id)
				go fn()
			}
		}
		w.mu.Unlock()
		if stopped {
			return
		}
	}
}

// errWouldBlock ends a step: the socket has nothing for userspace now.
var errWouldBlock = errors.New("would block")

// runSteps runs step each time src is readable, until step returns
// something else than errWouldBlock, which goes to fin (once). Between steps
// no goroutine is held: the idle waiter (w; nil: a goroutine parked in Go's
// poller instead) starts the next step when src is readable, or when ctx is
// done, after which the next step ends with ctx's error: whoever cancels
// also closes the sockets, which takes them out of the epoll set without an
// event. The first step waits for src too: the caller starts both
// directions of a connection before either moves a byte.
func runSteps(ctx context.Context, w *IdleWaiter, src *net.TCPConn, slot *idleSlot, step func() error, fin func(error)) {
	var next func()
	park := func() {
		if err := ctx.Err(); err != nil {
			fin(err)
			return
		}
		if w == nil {
			go func() {
				if err := waitReadable(src); err != nil {
					fin(err)
					return
				}
				next()
			}()
			return
		}
		if err := sockopt.WithFD(src, func(fd int) error { return w.arm(slot, fd, next) }); err != nil {
			fin(err)
			return
		}
		// A cancel that came between the check and the arm found nothing
		// to wake: wake now (at most one wake runs the step).
		if ctx.Err() != nil {
			w.wake(slot)
		}
	}
	next = func() {
		if err := step(); err != errWouldBlock {
			fin(err)
			return
		}
		park()
	}
	park()
}

// waitReadable parks the goroutine in Go's poller until c is readable.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Read(func(fd uintptr) bool { return sockopt.Readable(int(fd)) })
}
