// SPDX-License-Identifier: Apache-2.0

package outage

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/pepsal/pepsal/loader"
)

// Stalls is where the watcher reads the long legs' timeouts (loader.Stalls).
type Stalls interface {
	List(limit int) ([]loader.Stall, error)
	Forget(loader.Stall) error
}

// Link reaches the remotes: probes out, answers in, kicks to this host (ICMP).
type Link interface {
	Probe(remote netip.Addr, seq uint16) error
	Answers() <-chan Answer
	Kick(st loader.Stall, n int) error
}

// Defaults of --outage-probe and the silence that means a link is down: two
// seconds is more than a GEO link's loaded round trip (1.2 s measured with a
// full queue), so a busy link is not taken for a dead one.
const (
	DefaultEvery   = 100 * time.Millisecond
	DefaultSilence = 2 * time.Second
	// stallFresh: a timeout older than the kernel's largest back-off
	// (plus a silence) belongs to a leg that has given up or closed.
	stallFresh = 120*time.Second + DefaultSilence
	maxStalls  = 16384 // pepsal_stalled's size
	maxRemotes = 256   // probed at once; the others wait for their timeouts
	// maxKicks: one error undoes one back-off step; 15 is tcp_retries2's default.
	maxKicks = 16
)

// Watcher probes the remotes of stalled long legs and kicks those legs when
// their remote answers after a silence. Run it in one goroutine.
type Watcher struct {
	Stalls  Stalls
	Link    Link
	Every   time.Duration // between probes of a remote
	Silence time.Duration // a remote silent this long is down
	// Peer says whether a stalled leg runs to the other pepsal (a warm
	// path): only those are probed and kicked. A pepsal answers pings (a
	// client host may not), and probing costs the link bandwidth only
	// toward a handful of addresses. nil: every leg.
	Peer func(loader.Stall) bool
	Log  *slog.Logger

	now     func() time.Time
	remotes map[netip.Addr]*remote
	mu      sync.Mutex // guards stats
	stats   Stats
}

// remote is one probed address.
type remote struct {
	since     time.Time     // probed since
	lastAns   time.Time     // its latest answer
	down      bool          // silent for Silence: an outage
	downSince time.Time     // its last sign of life before the outage
	seq       uint16        // of the next probe
	sent      [64]time.Time // when each probe left, by seq % 64
	stalls    []loader.Stall
}

// Stats are the watcher's totals since start, and its state now.
type Stats struct {
	Probes       uint64        // echo requests sent
	Outages      uint64        // remotes found down, then back
	OutageTime   time.Duration // their lengths, summed
	Longest      time.Duration // the longest
	Last         time.Duration // the latest
	LastRecovery time.Duration // the latest return's answer round trip: the link was back at most this long before the kick
	Kicked       uint64        // stalled legs made to retransmit
	KickFailed   uint64        // ICMP errors the socket refused
	NotIPv4      uint64        // stalled legs over IPv6: no RFC 6069 there
	Probing      int           // remotes probed now
	Down         int           // of them, silent now
}

// Snapshot is a copy of the stats.
func (w *Watcher) Snapshot() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	if w.now == nil {
		w.now = time.Now
	}
	w.remotes = map[netip.Addr]*remote{}
	tick := time.NewTicker(w.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.tick()
		case a, ok := <-w.Link.Answers():
			if !ok {
				return
			}
			w.answer(a)
		}
	}
}

// tick reads the stalls, forgets the settled ones, probes the remotes of
// the others and marks the silent ones down.
func (w *Watcher) tick() {
	now := w.now()
	list, err := w.Stalls.List(maxStalls)
	if err != nil {
		w.Log.Debug("read the stalled legs", "err", err)
	}
	byRemote := map[netip.Addr][]loader.Stall{}
	for _, st := range list {
		r := st.Remote.Addr()
		rs := w.remotes[r]
		switch {
		case w.Peer != nil && !w.Peer(st):
			w.forget(st)
		case !r.Is4():
			w.count(func(s *Stats) { s.NotIPv4++ })
			w.forget(st)
		case st.Age > stallFresh:
			w.forget(st)
		case rs != nil && !rs.down && rs.lastAns.Sub(now.Add(-st.Age)) > w.Silence:
			// The remote answered well after this timeout and the leg
			// timed out no more: it recovered, or lost a packet, no outage.
			w.forget(st)
		default:
			byRemote[r] = append(byRemote[r], st)
		}
	}
	for r, rs := range w.remotes {
		if _, ok := byRemote[r]; !ok {
			if rs.down {
				w.Log.Info("no stalled leg left toward a silent remote: stopped probing it", "remote", r, "silent", now.Sub(rs.downSince).Round(time.Millisecond))
			}
			delete(w.remotes, r)
		}
	}
	for r, stalls := range byRemote {
		rs := w.remotes[r]
		if rs == nil {
			if len(w.remotes) >= maxRemotes {
				continue
			}
			rs = &remote{since: now}
			w.remotes[r] = rs
		}
		rs.stalls = stalls
		w.probe(r, rs, now)
		last := rs.since
		if rs.lastAns.After(last) {
			last = rs.lastAns
		}
		if !rs.down && now.Sub(last) >= w.Silence {
			rs.down, rs.downSince = true, last
			w.Log.Info("link outage: a remote with stalled legs is silent", "remote", r, "silent", now.Sub(last).Round(time.Millisecond), "stalled_legs", len(stalls))
		}
	}
	down := 0
	for _, rs := range w.remotes {
		if rs.down {
			down++
		}
	}
	w.count(func(s *Stats) { s.Probing, s.Down = len(w.remotes), down })
}

func (w *Watcher) probe(r netip.Addr, rs *remote, now time.Time) {
	rs.sent[rs.seq%uint16(len(rs.sent))] = now
	if err := w.Link.Probe(r, rs.seq); err != nil {
		w.Log.Debug("probe", "remote", r, "err", err)
	}
	rs.seq++
	w.count(func(s *Stats) { s.Probes++ })
}

// answer notes a remote's sign of life; the first after its silence ends
// the outage: every leg stalled toward it is kicked.
func (w *Watcher) answer(a Answer) {
	rs := w.remotes[a.From]
	if rs == nil {
		return
	}
	rs.lastAns = a.At
	if !rs.down {
		return
	}
	rs.down = false
	length := a.At.Sub(rs.downSince)
	rtt := a.At.Sub(rs.sent[a.Seq%uint16(len(rs.sent))])
	kicked, failed := 0, 0
	for _, st := range rs.stalls {
		if err := w.Link.Kick(st, min(int(st.Timeouts)+1, maxKicks)); err != nil {
			failed++
			w.Log.Debug("kick a stalled leg", "local", st.Local, "remote", st.Remote, "err", err)
			continue
		}
		kicked++
		w.forget(st)
	}
	rs.stalls = nil
	w.count(func(s *Stats) {
		s.Outages++
		s.OutageTime += length
		s.Longest = max(s.Longest, length)
		s.Last, s.LastRecovery = length, rtt
		s.Kicked += uint64(kicked)
		s.KickFailed += uint64(failed)
	})
	w.Log.Info("link back: stalled legs made to retransmit", "remote", a.From, "outage", length.Round(time.Millisecond),
		"answer_rtt", rtt.Round(time.Millisecond), "kicked", kicked, "failed", failed)
}

func (w *Watcher) forget(st loader.Stall) {
	if err := w.Stalls.Forget(st); err != nil {
		w.Log.Debug("forget a stalled leg", "err", err)
	}
}

func (w *Watcher) count(f func(*Stats)) {
	w.mu.Lock()
	f(&w.stats)
	w.mu.Unlock()
}
