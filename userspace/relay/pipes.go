// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

const (
	// pipeSize is the capacity asked for each pipe, as Go's runtime does:
	// one splice moves up to that much. Slots only cost memory while they
	// hold bytes, and only moving connections hold a pipe.
	pipeSize = 1 << 20
	// pipeIdleMax bounds the empty pipes kept for the next burst, and
	// pipeIdleTTL how long one is kept unused: a quiet daemon holds none.
	pipeIdleMax = 32
	pipeIdleTTL = time.Second
	// The pipes a daemon may hold are bounded (PipeLimit), and past the
	// bound the relay copies through a buffer.
	pipesMin, pipesMax = 64, 1024
)

// PipeLimit is how many splice pipes (2 fds each) a daemon with maxConns
// connections may hold at once: never more than its connections, so that
// a daemon that a tight fd limit holds to a few connections needs no fds
// for pipes it could not use.
func PipeLimit(maxConns int) int {
	return min(max(maxConns/4, min(pipesMin, maxConns)), pipesMax)
}

// pipe is a splice pipe; data is how many bytes it holds.
type pipe struct {
	r, w      int
	size      int
	data      int
	idleSince time.Time
}

// Pipes lends pipes to bursts of splicing. Only empty pipes come back to
// it: bytes left in a pipe belong to one connection and must never reach
// another. The zero value is a pool without a limit.
type Pipes struct {
	mu    sync.Mutex
	idle  []*pipe // oldest first; lent from the end
	sweep *time.Timer
	open  atomic.Int64 // pipes open, idle or lent
	// limit bounds the pipes open at once (0: unbounded), so that pipes
	// never take the fds accept and dial need: get fails past it and the
	// relay copies through a buffer instead.
	limit atomic.Int64
}

// SetLimit sets the bound (PipeLimit of the daemon's --max-conns).
func (pp *Pipes) SetLimit(n int) { pp.limit.Store(int64(n)) }

// errPipeLimit is what get returns past the bound.
var errPipeLimit = errors.New("splice pipe limit reached")

// allowed says whether one more pipe may be opened.
func (pp *Pipes) allowed() bool {
	l := pp.limit.Load()
	return l <= 0 || pp.open.Load() < l
}

// idlePipe lends an idle pipe, or returns nil when there is none.
func (pp *Pipes) idlePipe() *pipe {
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
func (pp *Pipes) get() (*pipe, error) {
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
func (pp *Pipes) put(p *pipe) {
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
func (pp *Pipes) closeIdle() {
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

func (pp *Pipes) close(p *pipe) {
	unix.Close(p.r)
	unix.Close(p.w)
	pp.open.Add(-1)
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

// relayBufs lends 64 KiB buffers: to the splice relay when no pipe can be
// had, to the kernel relay for what the verdict leaves to userspace. A
// cache: it holds nothing anyone reads.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
