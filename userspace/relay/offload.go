// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

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
	// the server leg (Setup.BeforeClose).
	beforeClose [2]func()
}

// offloadSteps: a connection that exchanged this many messages (steps that
// moved bytes, both ways) is handed over whatever its bytes: a long-lived
// connection of small requests is where the kernel relay's shorter round
// trips pay.
const offloadSteps = 16

// States of a hand-over.
const (
	offloadNone = iota
	offloadAsked
	offloadOff // called off, or done
)

// handover is the splice relay's side of an offload: once enough bytes
// moved, each direction stops after its next step (ask cancels octx, the
// directions' context, and wakes them; runSteps wakes a direction that
// armed meanwhile); when both have stopped, the connection goes to
// opt.offload. A direction that ends (EOF, an error) first calls it off and
// resumes the other on ctx. Without an offload octx is ctx, and the state
// offloadOff from the start.
type handover struct {
	octx    context.Context
	ocancel context.CancelFunc
	omu     sync.Mutex
	ostate  int
	stopped [2]bool
	moved   [2]atomic.Int64
	asked   atomic.Bool  // ostate went to offloadAsked
	steps   atomic.Int64 // steps that moved bytes, both directions
	resume  [2]func()    // a direction again, on ctx
}

// ask asks for the hand-over once the connection moved enough.
func (r *spliceRun) ask() {
	if r.moved[0].Load()+r.moved[1].Load() < r.opt.offloadAfter && r.steps.Load() < offloadSteps {
		return
	}
	r.omu.Lock()
	if r.ostate != offloadNone {
		r.omu.Unlock()
		return
	}
	r.ostate = offloadAsked
	r.asked.Store(true)
	r.omu.Unlock()
	r.ocancel()
	r.Waiter.wake(&r.slots[0])
	r.Waiter.wake(&r.slots[1])
}

// stoppedForHandover takes direction i's end (err) into the hand-over: a
// stop for it (octx canceled) waits for the other direction's, and the
// second hands the connection over; true then. Any other end calls the
// hand-over off and resumes the other direction if it had stopped for it.
func (r *spliceRun) stoppedForHandover(i int, err error) bool {
	r.omu.Lock()
	if errors.Is(err, context.Canceled) && r.ctx.Err() == nil {
		// octx was canceled: stopped for the hand-over.
		if r.ostate != offloadAsked { // called off meanwhile
			r.omu.Unlock()
			r.resume[i]()
			return true
		}
		r.stopped[i] = true
		both := r.stopped[0] && r.stopped[1]
		if both {
			r.ostate = offloadOff
		}
		r.omu.Unlock()
		if both {
			r.stopWake()
			r.cancel()
			r.opt.offload(r.moved[0].Load(), r.moved[1].Load(), r.slots)
		}
		return true
	}
	other := 1 - i
	resumeOther := r.ostate == offloadAsked && r.stopped[other]
	r.stopped[other] = false
	r.ostate = offloadOff
	r.omu.Unlock()
	if resumeOther {
		r.resume[other]()
	}
	return false
}
