// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// A browser opens a page with 10-20 connections at once. Through warm paths
// each of them may send a whole initial window (1000 segments for the long
// leg) in its first round trip, so a burst puts up to 20 windows into the
// satellite link's queue together: the queue overflows, and every flow that
// lost its tail waits for a loss probe or recovery, whole round trips of
// 600 ms (measured: 20 x 100 KB took 4-7 s with 12 SACK recoveries a burst,
// where one round trip plus serialization is 1.4 s).
//
// The gateway therefore treats a terminal's flows that start together as one
// ensemble (the idea of RFC 9040's shared control blocks): while a flow is in
// its first two round trips, its pacing rate is capped to a share of what the
// terminal's link carries (see pace), among the starting flows that have
// bytes to send or have not sent their first answer yet. The shares follow
// the flows every shareTick: a flow that answered a small request and went
// quiet holds none (a static share per starting flow cost a real page load
// 1.5 s: idle keep-alive connections held shares the page's large images
// needed). A flow that is alone with bytes to send is never capped, nor is
// any flow past its start, so long transfers and idle connections are left
// to the congestion control.
const (
	// startGain lets the sharing flows together send faster than the link,
	// so an estimate a little low costs nothing: the queue absorbs the excess.
	startGain = 1.5
	// shareBudget: how full the modeled link queue may get with uncapped
	// bytes, as a part of rate x RTT (what the initial window stands for):
	// a link's queue takes a burst that size.
	shareBudget = 0.5
	// shareTick is how often the shares follow which flows have bytes to send.
	shareTick = 10 * time.Millisecond
	// shareSampleMin: a flow that moved less than this cannot have filled
	// the link; its delivery rate says nothing about the link's.
	shareSampleMin = 64 << 10
	// shareMemory is how long a terminal's measured rate is trusted.
	shareMemory = 10 * time.Minute
)

// pacing is the ensembles of the gateway's terminals.
type pacing struct {
	mu      sync.Mutex
	terms   map[netip.Addr]*ensemble
	ticking bool          // the share ticker runs
	paced   atomic.Uint64 // flows whose start was paced
}

// ensemble is one terminal's warm flows.
type ensemble struct {
	term     netip.Addr
	flows    map[*sharedFlow]struct{}
	starting map[*sharedFlow]struct{} // in their first round trips
	queue    float64                  // bytes modeled in the link's queue (sent, not yet drained at rate)
	last     time.Time                // when queue was drained last
	measured uint64                   // link rate seen, bytes/s (0: none)
	at       time.Time                // when measured was seen
}

type sharedFlow struct {
	rc       syscall.RawConn // Control refuses a closed socket: its fd may be another's
	joined   time.Time
	sentAt0  uint64 // TCP_INFO bytes_sent at join
	sentSeen uint64 // bytes_sent already counted into the ensemble's queue
	rtt      time.Duration
	prior    uint64 // bytes/s: what the initial window assumes of the link
	lift     *time.Timer
	capped   bool
	counted  bool      // in paced
	cap      uint64    // the cap while capped, bytes/s
	closedBy time.Time // closed by the relay, capped: its bytes leave until then
}

func (f *sharedFlow) info() (*unix.TCPInfo, error) {
	var info *unix.TCPInfo
	var ierr error
	if err := f.rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, ierr
}

// setCap sets the flow's pacing cap in bytes/s (^0: none).
func (f *sharedFlow) setCap(rate uint64) {
	_ = f.rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, rate)
	})
}

func newPacing() *pacing { return &pacing{terms: map[netip.Addr]*ensemble{}} }

// starting is how many flows are in their first round trips now.
func (p *pacing) starting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.terms {
		n += len(e.starting)
	}
	return n
}

// join adds a warm flow that is about to relay. The relay runs beforeClose
// (nil when the flow could not join) right before it closes conn
// gracefully; leave takes the flow out once the relay is over. A flow's
// last delivery rate is sampled when its start ends (two round trips in),
// which is when a burst's flows have filled the link; once the socket is
// closed nothing can be read from it.
func (p *pacing) join(conn *net.TCPConn) (beforeClose, leave func()) {
	f, err := newSharedFlow(conn)
	if err != nil {
		return nil, func() {}
	}
	e := p.add(sockopt.AddrPort(conn.RemoteAddr()).Addr(), f)
	f.lift = time.AfterFunc(2*f.rtt, func() { p.lift(e, f) })
	var once sync.Once
	return func() { p.beforeClose(e, f) }, func() { once.Do(func() { p.leave(e, f) }) }
}

// newSharedFlow reads what pacing needs to know of a flow as it joins: the
// bytes it sent so far, its round trip, and the rate its initial window
// stands for.
func newSharedFlow(conn *net.TCPConn) (*sharedFlow, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	f := &sharedFlow{rc: rc, joined: time.Now()}
	info, err := f.info()
	if err != nil {
		return nil, err
	}
	f.sentAt0, f.sentSeen = info.Bytes_sent, info.Bytes_sent
	f.rtt = max(time.Duration(info.Rtt)*time.Microsecond, 10*time.Millisecond)
	// The initial window is sized as one round trip of the link: a whole
	// window per round trip is the rate it stands for.
	f.prior = uint64(float64(info.Snd_cwnd) * float64(info.Snd_mss) / f.rtt.Seconds())
	return f, nil
}

// add puts f into the ensemble of its terminal term, starting, paces the
// ensemble and starts the share ticker once two flows start together.
func (p *pacing) add(term netip.Addr, f *sharedFlow) *ensemble {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.terms[term]
	if e == nil {
		e = &ensemble{term: term, flows: map[*sharedFlow]struct{}{}, starting: map[*sharedFlow]struct{}{}}
		p.terms[term] = e
	}
	e.flows[f] = struct{}{}
	e.starting[f] = struct{}{}
	p.pace(e)
	if !p.ticking && len(e.starting) > 1 {
		p.ticking = true
		go p.tick()
	}
	return e
}

// lift ends f's start, two round trips in: its delivery rate is sampled
// and its cap goes.
func (p *pacing) lift(e *ensemble, f *sharedFlow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := e.starting[f]; ok {
		p.sample(e, f)
		delete(e.starting, f)
		uncap(f)
		p.pace(e)
	}
	p.forget(e)
}

// beforeClose runs right before the relay closes f's socket. The relay
// ends when the last bytes are queued, not sent: a small answer is still
// leaving at its capped rate when the socket closes, and a closed socket
// can no longer be changed or read. Keep the cap only if the queue drains
// before the lift would have come (uncap a big one), and put what is left
// to send into the link queue's model now.
func (p *pacing) beforeClose(e *ensemble, f *sharedFlow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var notSent int
	_ = f.rc.Control(func(fd uintptr) { notSent, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQNSD) })
	// Its last sends, and what is still to leave, go into the queue's
	// books now: a closed socket can no longer be read.
	if info, err := f.info(); err == nil {
		e.queue += float64(info.Bytes_sent-f.sentSeen) + float64(notSent)
		f.sentSeen = info.Bytes_sent + uint64(notSent)
	}
	now := time.Now()
	if _, starting := e.starting[f]; starting && f.capped {
		drain := time.Duration(float64(notSent) / float64(f.cap) * float64(time.Second))
		if drain > 2*f.rtt-now.Sub(f.joined) {
			delete(e.starting, f)
			uncap(f)
		} else {
			f.closedBy = now.Add(drain)
		}
	}
	p.pace(e)
}

// leave takes f out once its relay is over (join's leave runs it once).
func (p *pacing) leave(e *ensemble, f *sharedFlow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(e.flows, f)
	if f.closedBy.IsZero() {
		// Reset, or closed uncapped: nothing of it is left to share.
		delete(e.starting, f)
	}
	// Else still starting (closed while its last bytes leave): it
	// keeps its share until they are gone, or the lift.
	p.forget(e)
}

// forget drops an ensemble that holds nothing. Called with p.mu.
func (p *pacing) forget(e *ensemble) {
	if len(e.flows) == 0 && len(e.starting) == 0 && time.Since(e.at) > shareMemory {
		delete(p.terms, e.term)
	}
}

// tick makes the shares follow the flows while any terminal has more than
// one flow starting.
func (p *pacing) tick() {
	for {
		time.Sleep(shareTick)
		p.mu.Lock()
		more := false
		for _, e := range p.terms {
			if len(e.starting) > 1 {
				p.pace(e)
				more = true
			}
		}
		if !more {
			p.ticking = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// pace sets the caps of the ensemble's starting flows. It keeps a model of
// the terminal's link queue: every byte any of the terminal's flows sends
// goes in, and the queue drains at the link's rate. First come, first served
// while the queue has room: in the order they joined, a busy flow whose
// unsent bytes fit in the room left below shareBudget x rate x RTT leaves
// uncapped, as it would through the link's own FIFO queue; the busy flows
// beyond it, and those whose server has not answered yet, share startGain x
// rate equally (the rate alone once the queue is past its room). (Equal
// shares whatever the queue, tried first, made each answer of a page finish
// last: HTTP/1.1 page loads took 5.7-6.0 s instead of 4.4 s, the browser
// waiting on each answer before its next request.) An idle flow is capped
// like one more sharing flow, so that it cannot send a whole initial window
// at once when its bytes come. A flow busy alone, or idle with no flow busy,
// is uncapped. Called with p.mu.
func (p *pacing) pace(e *ensemble) {
	now := time.Now()
	type state struct {
		notSent int
		pending bool // has sent nothing since it joined
	}
	st := map[*sharedFlow]state{}
	var busy []*sharedFlow
	var prior, rtt float64
	for f := range e.starting {
		prior, rtt = max(prior, float64(f.prior)), max(rtt, f.rtt.Seconds())
		if s, ok := f.state(); ok && (s.notSent > 0 || s.pending) {
			st[f] = state{s.notSent, s.pending}
			busy = append(busy, f)
		} else if !f.closedBy.IsZero() && now.Before(f.closedBy) {
			busy = append(busy, f)
		}
	}
	rate := prior
	if float64(e.measured) > rate && now.Sub(e.at) < shareMemory {
		rate = float64(e.measured)
	}
	if !e.last.IsZero() {
		e.queue = max(0, e.queue-rate*now.Sub(e.last).Seconds())
	}
	e.last = now
	for f := range e.flows {
		if info, err := f.info(); err == nil && info.Bytes_sent > f.sentSeen {
			e.queue += float64(info.Bytes_sent - f.sentSeen)
			f.sentSeen = info.Bytes_sent
		}
	}
	room := shareBudget*rate*rtt - e.queue
	slices.SortFunc(busy, func(a, b *sharedFlow) int { return a.joined.Compare(b.joined) })
	admitted := map[*sharedFlow]bool{}
	sharing := 0
	for _, f := range busy {
		s, open := st[f]
		if open && !s.pending && float64(s.notSent) <= room {
			admitted[f] = true
			room -= float64(s.notSent)
			continue
		}
		sharing++
	}
	gain := startGain
	if e.queue >= shareBudget*rate*rtt {
		gain = 1
	}
	for f := range e.starting {
		if !f.closedBy.IsZero() {
			continue // closed: its cap can no longer change
		}
		_, isBusy := st[f]
		n := sharing
		if !isBusy {
			n++ // idle: as if its bytes came now
		}
		if admitted[f] || len(busy) == 0 || (len(busy) == 1 && isBusy) || rate == 0 {
			uncap(f)
			continue
		}
		c := max(uint64(gain*rate/float64(max(n, 1))), 1)
		if f.capped && c == f.cap {
			continue
		}
		if !f.counted && isBusy {
			f.counted = true
			p.paced.Add(1)
		}
		f.capped, f.cap = true, c
		f.setCap(c)
	}
}

// state reads what the flow still has to send, and whether it has sent
// anything since it joined; ok is false once the socket is closed.
func (f *sharedFlow) state() (s struct {
	notSent int
	pending bool
}, ok bool) {
	var err error
	if cerr := f.rc.Control(func(fd uintptr) { s.notSent, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQNSD) }); cerr != nil || err != nil {
		return s, false
	}
	if s.notSent == 0 {
		info, err := f.info()
		if err != nil {
			return s, false
		}
		s.pending = info.Bytes_sent == f.sentAt0
	}
	return s, true
}

func uncap(f *sharedFlow) {
	if f.capped && f.closedBy.IsZero() {
		f.capped = false
		f.setCap(^uint64(0))
	}
}

// sample learns the terminal's link rate from a flow that moved enough:
// concurrent flows share the link, so the rate the link carried is the sum
// of their delivery rates (an idle flow's last rate may be stale, which only
// errs high: a cap too high costs what not pacing costs). Called with p.mu.
func (p *pacing) sample(e *ensemble, f *sharedFlow) {
	info, err := f.info()
	if err != nil || info.Bytes_acked < shareSampleMin {
		return
	}
	var sum uint64
	for g := range e.flows {
		if gi, err := g.info(); err == nil {
			sum += gi.Delivery_rate
		}
	}
	if sum >= e.measured || time.Since(e.at) > shareMemory {
		e.measured, e.at = sum, time.Now()
	}
}
