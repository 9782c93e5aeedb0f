// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// flushKernel waits until every byte the kernel redirected from d.src, and
// every byte userspace wrote, has entered d.dst's TCP send queue: only then
// may userspace write after them, or shut d.dst down, without reordering or
// dropping the psock backlog.
func (k *Kernel) flushKernel(ctx context.Context, d *relayDir) error {
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
func (k *Kernel) tailPending(d *relayDir) (bool, error) {
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
func (k *Kernel) endedByFIN(d *relayDir) error {
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
func (k *Kernel) books(d *relayDir) (relayBooks, error) {
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
