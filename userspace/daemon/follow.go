// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/vishvananda/netlink"
)

// Routers delete and create interfaces again all the time (PPP, VLAN,
// WireGuard, modems): the new one has a new ifindex and no classifier. The
// daemon follows its interfaces by name: a link event of one of them makes
// it reconcile (loader's Reattach) at once, and it reconciles every
// followEvery anyway, so that an event lost (the netlink socket overflowed,
// or failed and is being subscribed again) delays a re-attachment, never
// loses it.
const (
	followEvery   = 5 * time.Second
	resubscribeIn = time.Second
	// linkEventBuffer is the event socket's receive buffer: a burst of
	// link events past it overflows the socket (ENOBUFS), which ends the
	// subscription; it is made again and a reconcile covers the gap.
	linkEventBuffer = 1 << 20
)

// follower keeps the classifier on the interfaces a daemon was given.
type follower struct {
	log      *slog.Logger
	reattach func() ([]loader.Placed, error)
	kicks    chan struct{} // a link event of a followed interface: reconcile now
	every    time.Duration // the backstop's period (followEvery)

	mu      sync.Mutex
	order   []string // the names, as given
	state   map[string]*followed
	lastErr string // of the last failed reconcile, logged once
}

// followed is one interface's standing, and what the log says of it.
type followed struct {
	report.IfaceHealth
	since time.Time
	ever  bool // the classifier was on an interface of this name once
}

func newFollower(log *slog.Logger, reattach func() ([]loader.Placed, error)) *follower {
	return &follower{log: log, reattach: reattach, kicks: make(chan struct{}, 1), every: followEvery, state: map[string]*followed{}}
}

// kick asks for a reconcile; kicks that come while one is pending are one.
func (f *follower) kick() {
	select {
	case f.kicks <- struct{}{}:
	default:
	}
}

// start reconciles once (the daemon has just attached: nothing is counted,
// a missing interface is said), then follows the link events until the
// returned stop, which waits for the goroutines to end.
func (f *follower) start() (stop func()) {
	f.reconcile(true)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); f.watch(ctx) }()
	go func() { defer wg.Done(); f.loop(ctx) }()
	return sync.OnceFunc(func() { cancel(); wg.Wait() })
}

// loop reconciles on each kick, and every followEvery.
func (f *follower) loop(ctx context.Context) {
	t := time.NewTicker(f.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kicks:
		case <-t.C:
		}
		f.reconcile(false)
	}
}

// watch subscribes to the link events of the daemon's network namespace
// (the process's: it runs inside it) and kicks on those of a followed
// interface; when the subscription ends (an overflow, an error) it
// subscribes again, and kicks for what it may have missed.
func (f *follower) watch(ctx context.Context) {
	for ctx.Err() == nil {
		ch := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			ReceiveBufferSize: linkEventBuffer,
			ErrorCallback: func(err error) {
				if ctx.Err() == nil {
					f.log.Warn("link events: subscribing again; a reconcile covers what was missed", "err", err)
				}
			},
		})
		if err != nil {
			f.log.Warn("subscribe to link events: interfaces are reconciled every few seconds only until it works", "err", err, "every", followEvery)
		} else {
			f.kick() // what happened before the subscription
			f.events(ctx, ch)
		}
		close(done)
		go func() { // the library's reader may still be sending
			for range ch {
			}
		}()
		select {
		case <-ctx.Done():
		case <-time.After(resubscribeIn):
		}
	}
}

// events kicks for the link events of followed interfaces until ch closes
// (the subscription ended) or ctx is done.
func (f *follower) events(ctx context.Context, ch <-chan netlink.LinkUpdate) {
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-ch:
			if !ok {
				return
			}
			if f.follows(u.Attrs().Name, int(u.Index)) {
				f.kick()
			}
		}
	}
}

// follows: name is followed, or index is where a followed interface is.
func (f *follower) follows(name string, index int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.state[name]; ok {
		return true
	}
	for _, s := range f.state {
		if s.Ifindex == index && index != 0 {
			return true
		}
	}
	return false
}

// reconcile puts the classifier back where it is missing and books what
// changed; a failure is logged once, until it changes.
func (f *follower) reconcile(initial bool) {
	placed, err := f.reattach()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if msg := err.Error(); msg != f.lastErr {
			f.lastErr = msg
			f.log.Error("cannot reconcile the interfaces: a lost one is not re-attached", "err", err)
		}
		return
	}
	f.lastErr = ""
	now := time.Now()
	for _, p := range placed {
		s, ok := f.state[p.Name]
		if !ok {
			s = &followed{IfaceHealth: report.IfaceHealth{Name: p.Name, ReturnOnly: p.ReturnOnly}, since: now}
			f.state[p.Name] = s
			f.order = append(f.order, p.Name)
		}
		f.update(s, p, now, initial)
	}
}

// update books one interface's new standing, and logs a loss, a return, a
// first appearance and an attachment that fails.
func (f *follower) update(s *followed, p loader.Placed, now time.Time, initial bool) {
	lost := s.Attached && (p.Ifindex != s.Ifindex || !p.On || p.Attached)
	if lost {
		s.Losses++
		f.log.Warn("interface lost: its new connections are not split until an interface of that name is back",
			"iface", p.Name, "ifindex", s.Ifindex, "losses", s.Losses)
	}
	back := p.On && (lost || !s.Attached)
	switch {
	case back && s.ever:
		s.Reattached++
		f.log.Info("interface back: classifier re-attached", "iface", p.Name, "ifindex", p.Ifindex, "reattached", s.Reattached)
	case back && !initial:
		f.log.Info("interface appeared: classifier attached", "iface", p.Name, "ifindex", p.Ifindex)
	case initial && p.Ifindex == 0:
		f.log.Warn("waiting for interface: nothing is split on it until it appears", "iface", p.Name)
	}
	errText := ""
	if p.Err != nil {
		errText = p.Err.Error()
		if errText != s.Error {
			f.log.Error("cannot attach the classifier: its new connections are not split", "iface", p.Name, "ifindex", p.Ifindex, "err", p.Err)
		}
	}
	if s.Attached != p.On {
		s.since = now
	}
	s.ever = s.ever || p.On
	s.Ifindex, s.Attached, s.Error = p.Ifindex, p.On, errText
}

// health is the followed interfaces' standing, in the order given.
func (f *follower) health() []report.IfaceHealth {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]report.IfaceHealth, 0, len(f.order))
	for _, name := range f.order {
		s := f.state[name]
		h := s.IfaceHealth
		h.SinceSeconds = time.Since(s.since).Seconds()
		out = append(out, h)
	}
	return out
}

// followIfaces starts following the daemon's interfaces by name (none
// without --iface: the attachment is `pepsal attach`'s, which follows
// nothing). It stops when the daemon stops accepting (serve) or ends.
func (r *run) followIfaces() error {
	if r.k.Reattach == nil {
		r.stopFollowing = func() {}
		return nil
	}
	r.follow = newFollower(r.log, r.k.Reattach)
	r.stopFollowing = r.follow.start()
	r.atEnd(r.stopFollowing)
	return nil
}
