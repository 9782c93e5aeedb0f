// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"math/rand/v2"
	"time"
)

// Burst loss draws from its own stream, so that a schedule never shifts the
// channel loss pattern a seed gives.
const streamBurst = 0x6275727374

// pipeSchedule applies a Schedule to one direction of the link.
type pipeSchedule struct {
	s      *Schedule
	up     bool          // which rate of a Step applies
	base   Dir           // the link's own delay, rate and queue
	anchor time.Duration // the schedule's start on the pipe's clock
	armed  bool          // false: the link keeps its own state until Arm
	step   int           // the Step applied now, -1 for base
	rng    *rand.Rand    // burst loss

	lastRelease time.Duration
}

func newPipeSchedule(s *Schedule, d Dir, up bool, seed, stream uint64) *pipeSchedule {
	return &pipeSchedule{s: s, up: up, base: d, step: -1, armed: !s.WaitArm, rng: rand.New(rand.NewPCG(seed, stream^streamBurst))}
}

// apply gives the pipe the delay, rate and queue of a step at now.
func (ps *pipeSchedule) apply(p *pipe, step int, now time.Duration) {
	if step == ps.step {
		return
	}
	ps.step = step
	d := ps.base
	if step >= 0 {
		st := ps.s.Handovers.Steps[step]
		if st.Delay > 0 {
			d.Delay = st.Delay
		}
		r := st.DownRate
		if ps.up {
			r = st.UpRate
		}
		if r > 0 {
			d.RateBps = r
		}
	}
	p.delay = d.Delay
	if p.rate != d.RateBps {
		// The bytes still queued keep their release times, but the queue's
		// accounting (backlog) re-times them at the new rate, so that a
		// faster step does not see them as a queue of its own size.
		if left := p.backlog(now); left > 0 && d.RateBps > 0 {
			p.busyUntil = now + time.Duration(left*8e9/float64(d.RateBps))
		}
		p.rate, p.rem = d.RateBps, 0 // the remainder was in units of the old rate
	}
	p.limit = d.queueLimit()
}

// admit is pipe.admit on a scheduled link. A frame is lost to an outage if
// the link is down when it arrives at the link or when it would reach the
// far end: a down link neither carries nor holds anything, and what was in
// flight when it went down is lost with it. Frames queued for serialization
// before an outage and delivered after it survive, as in a modem's buffer.
func (ps *pipeSchedule) admit(p *pipe, now time.Duration, n int) (time.Duration, verdict) {
	st := linkState{step: -1}
	if ps.armed {
		st = ps.s.at(now - ps.anchor)
	}
	if st.down {
		return 0, dropOutage
	}
	ps.apply(p, st.step, now)
	release, v := p.transmit(now, n)
	if v != pass {
		return release, v
	}
	if st.burstLoss > 0 && ps.rng.Float64() < st.burstLoss {
		return 0, dropBurst
	}
	// After a step to a shorter delay no frame may overtake an earlier one:
	// the delay line is a FIFO.
	release = max(release, ps.lastRelease)
	if ps.armed && ps.s.at(release-ps.anchor).down {
		return 0, dropOutage
	}
	ps.lastRelease = release
	return release, pass
}
