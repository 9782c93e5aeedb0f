package userspace

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
// its first round trips, its pacing rate is capped to a share of what the
// terminal's link carries, startGain x rate / (flows starting together). The
// cap lifts after two round trips, or as soon as the flow ends; a flow that
// starts alone is never capped, and neither is any flow once it is past its
// start, so long transfers and idle connections are left to the congestion
// control.
const (
	// startGain lets a burst's flows together send faster than the link, so
	// an estimate a little low costs nothing: the queue absorbs the excess
	// (a third of what the burst sends, at most).
	startGain = 1.5
	// shareSampleMin: a flow that moved less than this cannot have filled
	// the link; its delivery rate says nothing about the link's.
	shareSampleMin = 64 << 10
	// shareMemory is how long a terminal's measured rate is trusted.
	shareMemory = 10 * time.Minute
)

// peerShare is the ensembles of the gateway's terminals.
type peerShare struct {
	mu    sync.Mutex
	terms map[netip.Addr]*ensemble
	paced atomic.Uint64 // flows whose start was paced
}

// ensemble is one terminal's warm flows.
type ensemble struct {
	flows    map[*sharedFlow]struct{}
	starting map[*sharedFlow]struct{} // in their first round trips
	measured uint64                   // link rate seen, bytes/s (0: none)
	at       time.Time                // when measured was seen
}

type sharedFlow struct {
	rc      syscall.RawConn // Control refuses a closed socket: its fd may be another's
	counted bool            // in paced
	rtt     time.Duration
	prior   uint64 // bytes/s: what the initial window assumes of the link
	lift    *time.Timer
	capped  bool
	rate    uint64 // the cap while capped, bytes/s
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

func newPeerShare() *peerShare { return &peerShare{terms: map[netip.Addr]*ensemble{}} }

// starting is how many flows are in their first round trips now.
func (p *peerShare) starting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.terms {
		n += len(e.starting)
	}
	return n
}

// join adds a warm flow that is about to relay; the returned func takes it
// out. A flow's last delivery rate is sampled when its start ends (two round
// trips in), which is when a burst's flows have filled the link; once the
// socket is closed nothing can be read from it.
func (p *peerShare) join(conn *net.TCPConn) (leave func()) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return func() {}
	}
	f := &sharedFlow{rc: rc}
	info, err := f.info()
	if err != nil {
		return func() {}
	}
	f.rtt = max(time.Duration(info.Rtt)*time.Microsecond, 10*time.Millisecond)
	// The initial window is sized as one round trip of the link: a whole
	// window per round trip is the rate it stands for.
	f.prior = uint64(float64(info.Snd_cwnd) * float64(info.Snd_mss) / f.rtt.Seconds())
	term := addrPort(conn.RemoteAddr()).Addr()

	p.mu.Lock()
	e := p.terms[term]
	if e == nil {
		e = &ensemble{flows: map[*sharedFlow]struct{}{}, starting: map[*sharedFlow]struct{}{}}
		p.terms[term] = e
	}
	e.flows[f] = struct{}{}
	e.starting[f] = struct{}{}
	p.pace(e)
	p.mu.Unlock()

	start := time.Now()
	f.lift = time.AfterFunc(2*f.rtt, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := e.starting[f]; ok {
			p.sample(e, f)
			delete(e.starting, f)
			uncap(f)
			p.pace(e)
		}
		if len(e.flows) == 0 && len(e.starting) == 0 && time.Since(e.at) > shareMemory {
			delete(p.terms, term)
		}
	})
	// The relay ends when the last bytes are queued, not sent: a small
	// answer is still leaving at its capped rate when the socket closes, and
	// a closed socket can no longer be changed. Keep the cap only if the
	// queue drains before the lift would have come; uncap a big one.
	beforeClose.Store(conn, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := e.starting[f]; !ok || !f.capped {
			return
		}
		var queued int
		_ = f.rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		if time.Duration(float64(queued)/float64(f.rate)*float64(time.Second)) > 2*f.rtt-time.Since(start) {
			delete(e.starting, f)
			uncap(f)
			p.pace(e)
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			beforeClose.Delete(conn)
			p.mu.Lock()
			defer p.mu.Unlock()
			delete(e.flows, f)
			// Still starting (closed while its last bytes leave): it keeps
			// its share until the lift.
			if len(e.flows) == 0 && len(e.starting) == 0 && time.Since(e.at) > shareMemory {
				delete(p.terms, term)
			}
		})
	}
}

// beforeClose holds, per socket, what to do just before a relay closes it
// gracefully (closeGracefully runs it).
var beforeClose sync.Map // *net.TCPConn -> func()

// pace sets the caps of the ensemble's starting flows. Called with p.mu.
func (p *peerShare) pace(e *ensemble) {
	n := len(e.starting)
	if n < 2 {
		for f := range e.starting {
			uncap(f)
		}
		return
	}
	for f := range e.starting {
		rate := f.prior
		if e.measured > rate && time.Since(e.at) < shareMemory {
			rate = e.measured
		}
		if rate == 0 {
			continue
		}
		if !f.counted {
			f.counted = true
			p.paced.Add(1)
		}
		f.capped = true
		f.rate = max(uint64(startGain*float64(rate)/float64(n)), 1)
		f.setCap(f.rate)
	}
}

func uncap(f *sharedFlow) {
	if f.capped {
		f.capped = false
		f.setCap(^uint64(0))
	}
}

// sample learns the terminal's link rate from a flow that moved enough:
// concurrent flows share the link, so the rate the link carried is the sum
// of their delivery rates (an idle flow's last rate may be stale, which only
// errs high: a cap too high costs what not pacing costs). Called with p.mu.
func (p *peerShare) sample(e *ensemble, f *sharedFlow) {
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
