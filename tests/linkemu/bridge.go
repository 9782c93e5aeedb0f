// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
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

// DirStats counts one direction. FramesIn = FramesOut + DropLoss + DropQueue
// + DropTx + Queued at any instant.
type DirStats struct {
	FramesIn, BytesIn   uint64 // wire-size frames offered to the emulated link
	FramesOut, BytesOut uint64 // frames written to the far interface
	DropLoss            uint64 // lost by the channel loss model
	DropQueue           uint64 // tail dropped: serialization queue full
	DropTx              uint64 // the far interface refused the frame
	Malformed           uint64 // received but unparseable, discarded before FramesIn
	GSOSplit            uint64 // offloaded super-frames cut into wire-size frames
	KernelDrops         uint64 // overflowed the rx socket before we read them
	Queued              uint64 // in the delay line now
	// MaxLate is the worst delay between a frame's due time and its
	// release by the scheduler: the emulator's own timing error.
	MaxLate time.Duration
}

func (s DirStats) String() string {
	return fmt.Sprintf("in %d (%d B) out %d (%d B) loss %d queue %d tx-err %d malformed %d gso-split %d kernel-drops %d queued %d max-late %v",
		s.FramesIn, s.BytesIn, s.FramesOut, s.BytesOut, s.DropLoss, s.DropQueue, s.DropTx,
		s.Malformed, s.GSOSplit, s.KernelDrops, s.Queued, s.MaxLate)
}

// Stats is a snapshot of both directions.
type Stats struct {
	Down, Up DirStats
}

type counters struct {
	framesIn, bytesIn, framesOut, bytesOut         atomic.Uint64
	dropLoss, dropQueue, dropTx, malformed, gsoSpl atomic.Uint64
	kernelDrops                                    atomic.Uint64
	maxLate                                        atomic.Int64
}

// port is one bridged interface: a receive socket that sees every frame
// arriving on it, and a send-only socket (protocol 0 receives nothing).
type port struct {
	name    string
	ifindex int
	rx      *os.File
	tx      int
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

func openPort(name string) (p *port, err error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	if err := disableOffloads(name); err != nil {
		slog.Warn("linkemu: offloads left on", "if", name, "err", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("linkemu: cannot disable IPv6", "if", name, "err", err)
	}
	p = &port{name: name, ifindex: ifi.Index, tx: -1}
	defer func() {
		if err != nil {
			p.close()
		}
	}()

	// Protocol 0 at creation: nothing is queued until bind picks the interface.
	rx, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("rx socket on %s: %w", name, err)
	}
	p.rx = os.NewFile(uintptr(rx), "linkemu-rx-"+name)
	for _, o := range []struct {
		level, opt, val int
		what            string
	}{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		// What we write on the other port must not come back as input.
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rxSockBuf, "SO_RCVBUFFORCE"},
	} {
		if err := unix.SetsockoptInt(rx, o.level, o.opt, o.val); err != nil {
			return nil, fmt.Errorf("%s on %s: %w", o.what, name, err)
		}
	}
	if err := unix.Bind(rx, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("bind rx on %s: %w", name, err)
	}
	// Promiscuous: a real NIC would otherwise filter frames not addressed to it.
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(rx, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return nil, fmt.Errorf("promiscuous %s: %w", name, err)
	}

	if p.tx, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("tx socket on %s: %w", name, err)
	}
	if err := unix.SetsockoptInt(p.tx, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, txSockBuf); err != nil {
		return nil, fmt.Errorf("SO_SNDBUFFORCE on %s: %w", name, err)
	}
	if err := unix.Bind(p.tx, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("bind tx on %s: %w", name, err)
	}
	return p, nil
}

func (p *port) close() {
	if p.rx != nil {
		p.rx.Close()
	}
	if p.tx >= 0 {
		unix.Close(p.tx)
		p.tx = -1
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

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

func (d *direction) stats() DirStats {
	var kernelDrops uint64
	if rc, err := d.in.rx.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			// PACKET_STATISTICS resets on read, hence the accumulation.
			if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				kernelDrops = uint64(st.Drops)
			}
		})
	}
	d.c.kernelDrops.Add(kernelDrops)
	d.mu.Lock()
	q := uint64(len(d.line) - d.head)
	d.mu.Unlock()
	return DirStats{
		FramesIn:    d.c.framesIn.Load(),
		BytesIn:     d.c.bytesIn.Load(),
		FramesOut:   d.c.framesOut.Load(),
		BytesOut:    d.c.bytesOut.Load(),
		DropLoss:    d.c.dropLoss.Load(),
		DropQueue:   d.c.dropQueue.Load(),
		DropTx:      d.c.dropTx.Load(),
		Malformed:   d.c.malformed.Load(),
		GSOSplit:    d.c.gsoSpl.Load(),
		KernelDrops: d.c.kernelDrops.Load(),
		Queued:      q,
		MaxLate:     time.Duration(d.c.maxLate.Load()),
	}
}

// Stats returns the counters; it stays usable after Close.
func (b *Bridge) Stats() Stats {
	return Stats{Down: b.down.stats(), Up: b.up.stats()}
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
