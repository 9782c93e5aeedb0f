// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"math/rand/v2"
	"time"
)

// lossModel decides, frame by frame, whether the channel corrupts a frame.
type lossModel interface {
	lose() bool
}

type noLoss struct{}

func (noLoss) lose() bool { return false }

type bernoulli struct {
	p   float64
	rng *rand.Rand
}

func (b *bernoulli) lose() bool { return b.rng.Float64() < b.p }

type gilbertElliott struct {
	cfg GilbertElliott
	bad bool
	rng *rand.Rand
}

// lose decides in the current state, then moves: always two draws per frame,
// so that the pattern depends on the seed and the frame count only.
func (g *gilbertElliott) lose() bool {
	p := g.cfg.K
	if g.bad {
		p = g.cfg.H
	}
	lost := g.rng.Float64() < p
	u := g.rng.Float64()
	if g.bad {
		g.bad = u >= g.cfg.R
	} else {
		g.bad = u < g.cfg.P
	}
	return lost
}

// Per-direction PCG streams, so the two directions never share draws.
const (
	streamDown = 0x646f776e
	streamUp   = 0x7570
)

func newLossModel(d Dir, seed, stream uint64) lossModel {
	rng := rand.New(rand.NewPCG(seed, stream))
	switch {
	case d.GE != nil:
		return &gilbertElliott{cfg: *d.GE, rng: rng}
	case d.Loss > 0:
		return &bernoulli{p: d.Loss, rng: rng}
	}
	return noLoss{}
}

type verdict int

const (
	pass verdict = iota
	dropLoss
	dropQueue
	dropOutage // the schedule has the link down
	dropBurst  // lost in a handover's loss burst
)

// pipe is the pure timing and drop logic of one direction. Times are
// monotonic offsets from an arbitrary epoch.
type pipe struct {
	delay time.Duration
	rate  int64 // bits/s, 0 = unlimited
	limit int   // bytes awaiting serialization
	loss  lossModel

	busyUntil time.Duration // end of serialization of the last accepted frame
	rem       int64         // sub-nanosecond remainder of busyUntil, in 1/rate ns

	sched *pipeSchedule // nil: the link never changes
}

func newPipe(d Dir, seed, stream uint64) *pipe {
	return &pipe{
		delay: d.Delay,
		rate:  d.RateBps,
		limit: d.queueLimit(),
		loss:  newLossModel(d, seed, stream),
	}
}

// backlog is the number of bytes still to serialize at now, including the
// unsent part of the frame on the wire.
func (p *pipe) backlog(now time.Duration) float64 {
	if p.rate == 0 || p.busyUntil <= now {
		return 0
	}
	return float64(p.busyUntil-now) * float64(p.rate) / 8e9
}

// admit takes a frame of n bytes arriving at now and returns when its last
// bit reaches the far end. The frame is tail dropped if it does not fit in
// the queue (an empty queue always accepts one frame, so a tiny limit cannot
// blackhole the link). Channel loss is decided after queueing: a lost frame
// still occupied the link for its serialization time, as on a real channel.
// Departure is max(now, previous departure) + n*8/rate, then + delay; the
// remainder carried between frames keeps rounding from drifting the rate.
func (p *pipe) admit(now time.Duration, n int) (time.Duration, verdict) {
	if p.sched != nil {
		return p.sched.admit(p, now, n)
	}
	return p.transmit(now, n)
}

// transmit is admit on a link that does not change.
func (p *pipe) transmit(now time.Duration, n int) (time.Duration, verdict) {
	if p.rate == 0 {
		if p.loss.lose() {
			return 0, dropLoss
		}
		return now + p.delay, pass
	}
	if b := p.backlog(now); b > 0 && b+float64(n) > float64(p.limit) {
		return 0, dropQueue
	}
	if p.busyUntil <= now {
		p.busyUntil, p.rem = now, 0
	}
	bits := int64(n)*8*int64(time.Second) + p.rem
	p.busyUntil += time.Duration(bits / p.rate)
	p.rem = bits % p.rate
	if p.loss.lose() {
		return 0, dropLoss
	}
	return p.busyUntil + p.delay, pass
}
