// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// DirStats counts one direction. FramesIn = FramesOut + DropLoss + DropQueue
// + DropOutage + DropBurst + DropTx + Queued at any instant.
type DirStats struct {
	FramesIn, BytesIn   uint64 // wire-size frames offered to the emulated link
	FramesOut, BytesOut uint64 // frames written to the far interface
	DropLoss            uint64 // lost by the channel loss model
	DropQueue           uint64 // tail dropped: serialization queue full
	DropOutage          uint64 // the schedule had the link down
	DropBurst           uint64 // lost in a handover's loss burst
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
	return fmt.Sprintf("in %d (%d B) out %d (%d B) loss %d queue %d outage %d burst %d tx-err %d malformed %d gso-split %d kernel-drops %d queued %d max-late %v",
		s.FramesIn, s.BytesIn, s.FramesOut, s.BytesOut, s.DropLoss, s.DropQueue, s.DropOutage, s.DropBurst, s.DropTx,
		s.Malformed, s.GSOSplit, s.KernelDrops, s.Queued, s.MaxLate)
}

// Stats is a snapshot of both directions.
type Stats struct {
	Down, Up DirStats
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
		DropOutage:  d.c.dropOutage.Load(),
		DropBurst:   d.c.dropBurst.Load(),
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
