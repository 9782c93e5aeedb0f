// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pepsal/pepsal/tests/testbed"
)

const (
	// rxBufBytes is big enough for a BIG TCP super-frame (up to 512 KiB is
	// possible, 64 KiB is the veth default).
	rxBufBytes = 512<<10 + vnetHdrLen
	// Socket buffers absorb bursts while the bridge goroutines are not
	// scheduled; the delay line itself lives in user memory.
	rxSockBuf = 32 << 20
	txSockBuf = 8 << 20
	// maxInflightBytes bounds the delay line of one direction so that an
	// unlimited-rate link with a long delay cannot eat all memory.
	maxInflightBytes = 256 << 20
)

type counters struct {
	framesIn, bytesIn, framesOut, bytesOut         atomic.Uint64
	dropLoss, dropQueue, dropTx, malformed, gsoSpl atomic.Uint64
	kernelDrops, dropOutage, dropBurst             atomic.Uint64
	maxLate                                        atomic.Int64
}

type queued struct {
	data    []byte
	release time.Duration
}

// direction moves frames from one port's rx to the other port's tx.
type direction struct {
	in, out *port
	c       counters
	efd     int // eventfd: wakes the scheduler when the line becomes non-empty or on close

	mu          sync.Mutex
	pipe        *pipe
	line        []queued // release times never decrease, so a FIFO is a delay line
	head        int
	inflight    int
	closed      bool
	lastTxError error
}

// Bridge is a running emulated link. Create it with Start.
type Bridge struct {
	link  Link
	base  time.Time
	ports [2]*port // toward client, toward router
	down  *direction
	up    *direction
	wg    sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start bridges towardClient and towardRouter inside ns (the current
// namespace if ns is nil), emulating l. The interfaces are dedicated to the
// bridge: their offloads are turned off, IPv6 is disabled on them so the
// namespace does not talk on the link itself, and they go promiscuous.
func Start(ns *testbed.NS, towardClient, towardRouter string, l Link) (*Bridge, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	if towardClient == towardRouter {
		return nil, fmt.Errorf("cannot bridge %q to itself", towardClient)
	}
	b := &Bridge{link: l}
	setup := func() error {
		for i, name := range []string{towardClient, towardRouter} {
			p, err := openPort(name)
			if err != nil {
				return err
			}
			b.ports[i] = p
		}
		return nil
	}
	var err error
	if ns == nil {
		err = setup()
	} else {
		err = ns.Do(setup)
	}
	if err != nil {
		for _, p := range b.ports {
			if p != nil {
				p.close()
			}
		}
		return nil, err
	}
	cli, rtr := b.ports[0], b.ports[1]
	b.down = &direction{in: rtr, out: cli, pipe: newPipe(l.Down, l.Seed, streamDown), efd: -1}
	b.up = &direction{in: cli, out: rtr, pipe: newPipe(l.Up, l.Seed, streamUp), efd: -1}
	if l.Schedule != nil {
		b.down.pipe.sched = newPipeSchedule(l.Schedule, l.Down, false, l.Seed, streamDown)
		b.up.pipe.sched = newPipeSchedule(l.Schedule, l.Up, true, l.Seed, streamUp)
	}
	for _, d := range []*direction{b.down, b.up} {
		if d.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
			b.closeFDs()
			return nil, fmt.Errorf("eventfd: %w", err)
		}
	}
	b.base = time.Now()
	for _, d := range []*direction{b.down, b.up} {
		b.wg.Add(2)
		go b.receive(d)
		go b.schedule(d)
	}
	return b, nil
}

// Middle adapts the emulator to testbed.Options.Middle.
func Middle(l Link) testbed.Middle {
	return func(ns *testbed.NS, towardClient, towardRouter string) (io.Closer, error) {
		b, err := Start(ns, towardClient, towardRouter, l)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
}

// Link returns the emulated configuration.
func (b *Bridge) Link() Link { return b.link }

// Arm restarts the link's schedule now: its outages and handovers count
// from the returned instant, so a bench can align them with a transfer it
// is about to start. A link without a schedule ignores it.
func (b *Bridge) Arm() time.Time {
	now := b.now()
	for _, d := range []*direction{b.down, b.up} {
		d.mu.Lock()
		if d.pipe.sched != nil {
			d.pipe.sched.anchor, d.pipe.sched.armed = now, true
		}
		d.mu.Unlock()
	}
	return b.base.Add(now)
}

func (b *Bridge) now() time.Duration { return time.Since(b.base) }

// receive reads one port and feeds the emulated direction. It ends when the
// rx file is closed.
func (b *Bridge) receive(d *direction) {
	defer b.wg.Done()
	rc, err := d.in.rx.SyscallConn()
	if err != nil {
		slog.Error("linkemu: rx conn", "if", d.in.name, "err", err)
		return
	}
	buf := make([]byte, rxBufBytes)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			// MSG_TRUNC: n is the real length, so truncation is detectable.
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		now := b.now()
		if rerr != nil {
			// Per-frame failures (e.g. a super-frame the kernel cannot describe
			// in a vnet header) consume the frame; the next read is fresh.
			if rerr != unix.EINTR {
				d.c.malformed.Add(1)
				slog.Debug("linkemu: recv", "if", d.in.name, "err", rerr)
			}
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n > len(buf) {
			d.c.malformed.Add(1)
			continue
		}
		h, err := parseVnetHdr(buf[:n])
		if err != nil {
			d.c.malformed.Add(1)
			continue
		}
		frames, err := wireFrames(h, buf[vnetHdrLen:n])
		if err != nil {
			d.c.malformed.Add(1)
			slog.Debug("linkemu: dropped frame", "if", d.in.name, "err", err)
			continue
		}
		if len(frames) > 1 {
			d.c.gsoSpl.Add(1)
		}
		d.admit(now, frames)
	}
}

func (d *direction) admit(now time.Duration, frames [][]byte) {
	d.mu.Lock()
	wasEmpty := d.head == len(d.line)
	for _, f := range frames {
		d.c.framesIn.Add(1)
		d.c.bytesIn.Add(uint64(len(f)))
		if d.inflight+len(f) > maxInflightBytes {
			d.c.dropQueue.Add(1)
			continue
		}
		release, v := d.pipe.admit(now, len(f))
		switch v {
		case dropLoss:
			d.c.dropLoss.Add(1)
			continue
		case dropQueue:
			d.c.dropQueue.Add(1)
			continue
		case dropOutage:
			d.c.dropOutage.Add(1)
			continue
		case dropBurst:
			d.c.dropBurst.Add(1)
			continue
		}
		d.line = append(d.line, queued{data: f, release: release})
		d.inflight += len(f)
	}
	wake := wasEmpty && d.head < len(d.line) && !d.closed
	d.mu.Unlock()
	if wake {
		d.wake()
	}
}

// wake bumps the eventfd; a pending count is as good as a new one, so EAGAIN
// (counter saturated) is fine.
func (d *direction) wake() {
	var one = [8]byte{1} // host order 1 on little endian; any non-zero value wakes
	if _, err := unix.Write(d.efd, one[:]); err != nil && err != unix.EAGAIN {
		slog.Error("linkemu: eventfd", "err", err)
	}
}

// earlyWake splits long sleeps: an idle (virtual) CPU woken after hundreds
// of milliseconds comes back ~0.5 ms late, one woken after a millisecond only
// tens of microseconds late, so long waits end 1 ms early and sleep again.
const earlyWake = time.Millisecond

// schedule releases frames at their release time. Go timers round sleeps up
// to the millisecond on Linux, so it sleeps in ppoll on a dedicated thread
// with 1 ns timer slack instead: wake-ups are then tens of microseconds late
// at worst, and since release times are absolute the lateness never adds up.
func (b *Bridge) schedule(d *direction) {
	defer b.wg.Done()
	// Never unlocked: the thread, with its changed timer slack, dies with us.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0); err != nil {
		slog.Debug("linkemu: timer slack", "err", err)
	}
	pfd := []unix.PollFd{{Fd: int32(d.efd), Events: unix.POLLIN}}
	var (
		batch [][]byte
		ev    [8]byte
		ts    unix.Timespec
	)
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return
		}
		now := b.now()
		batch = batch[:0]
		if d.head < len(d.line) && d.line[d.head].release <= now {
			// The head is the most overdue frame of the batch.
			if late := int64(now - d.line[d.head].release); late > d.c.maxLate.Load() {
				d.c.maxLate.Store(late)
			}
		}
		for d.head < len(d.line) && d.line[d.head].release <= now {
			batch = append(batch, d.line[d.head].data)
			d.inflight -= len(d.line[d.head].data)
			d.line[d.head] = queued{}
			d.head++
		}
		if d.head == len(d.line) {
			d.line, d.head = d.line[:0], 0
		} else if d.head > 4096 && d.head > len(d.line)/2 {
			d.line = append(d.line[:0], d.line[d.head:]...)
			d.head = 0
		}
		var timeout *unix.Timespec
		if d.head < len(d.line) {
			wait := d.line[d.head].release - now
			if wait > 2*earlyWake {
				wait -= earlyWake
			}
			ts = unix.NsecToTimespec(int64(wait))
			timeout = &ts
		}
		d.mu.Unlock()

		if len(batch) > 0 {
			for _, f := range batch {
				d.send(f)
			}
			continue // sending took time: look again before sleeping
		}
		if _, err := unix.Ppoll(pfd, timeout, nil); err != nil && err != unix.EINTR {
			slog.Error("linkemu: ppoll", "err", err)
			time.Sleep(time.Millisecond) // never spin on a persistent error
		}
		if pfd[0].Revents&unix.POLLIN != 0 {
			_, _ = unix.Read(d.efd, ev[:])
		}
	}
}

func (d *direction) send(f []byte) {
	for {
		_, err := unix.Write(d.out.tx, f)
		switch {
		case err == nil:
			d.c.framesOut.Add(1)
			d.c.bytesOut.Add(uint64(len(f)))
			return
		case err == unix.EINTR:
			continue
		}
		// ENOBUFS (peer backlog full), EAGAIN (socket buffer full), ENETDOWN:
		// the frame is lost, as on a wire whose far end is not listening.
		d.c.dropTx.Add(1)
		d.mu.Lock()
		first := d.lastTxError == nil || !errors.Is(err, d.lastTxError)
		d.lastTxError = err
		d.mu.Unlock()
		if first {
			slog.Warn("linkemu: send", "if", d.out.name, "err", err)
		}
		return
	}
}

// Close stops the bridge, waits for its goroutines and closes its sockets.
// Frames still in the delay line are discarded. It is safe to call twice.
func (b *Bridge) Close() error {
	b.closeOnce.Do(func() {
		for _, d := range []*direction{b.down, b.up} {
			d.mu.Lock()
			d.closed = true
			d.mu.Unlock()
			d.wake()
		}
		// Readers hold no lock while blocked; closing the files wakes them.
		// Their final counters stay readable.
		var errs []error
		for _, p := range b.ports {
			if err := p.rx.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close rx %s: %w", p.name, err))
			}
		}
		b.wg.Wait()
		b.closeFDs()
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// closeFDs releases what is not an *os.File; only after the goroutines that
// use them have gone, so a recycled descriptor number is never written to.
func (b *Bridge) closeFDs() {
	for _, d := range []*direction{b.down, b.up} {
		if d != nil && d.efd >= 0 {
			unix.Close(d.efd)
			d.efd = -1
		}
	}
	for _, p := range b.ports {
		if p != nil {
			p.close()
		}
	}
}
