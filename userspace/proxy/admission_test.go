// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/relay"
	"golang.org/x/sys/unix"
)

// TestAdmissionHysteresis: the flag goes up at Max, stays up down to the
// low-water mark and comes down below it; it is written only on a change.
func TestAdmissionHysteresis(t *testing.T) {
	var writes []bool
	table := NewTable()
	a := NewAdmission(10, func(full bool) error { writes = append(writes, full); return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	table.SetAdmission(a)
	if a.Low != 9 || LowWater(100) != 90 || LowWater(1) != 0 {
		t.Fatalf("low water %d (of 10), %d (of 100), %d (of 1)", a.Low, LowWater(100), LowWater(1))
	}
	c := netip.MustParseAddrPort("10.0.0.1:1")
	var conns []*conn.Conn
	for range 12 {
		conns = append(conns, table.Add(c, c, conn.Splice))
	}
	if fmt.Sprint(writes) != "[true]" || !table.Stats().Full {
		t.Fatalf("after 12 adds: writes %v", writes)
	}
	table.Remove(conns[0], conn.Completed) // 11
	table.Remove(conns[1], conn.Completed) // 10
	table.Remove(conns[2], conn.Completed) // 9: at the mark, still full
	if fmt.Sprint(writes) != "[true]" {
		t.Fatalf("at the low-water mark: writes %v", writes)
	}
	table.Remove(conns[3], conn.Completed) // 8
	if fmt.Sprint(writes) != "[true false]" || table.Stats().Full {
		t.Fatalf("below the low-water mark: writes %v", writes)
	}
	// A shortage trips it at once, whatever the count.
	if !table.ResourceShortage(fmt.Errorf("accept: %w", unix.EMFILE)) || !table.Stats().Full {
		t.Fatalf("EMFILE: writes %v", writes)
	}
	if table.ResourceShortage(fmt.Errorf("dial: %w", unix.ECONNREFUSED)) {
		t.Fatal("a refused dial is no shortage")
	}
	if s := table.Stats(); s.Shortages != 1 || s.FullTrips != 2 || s.MaxConns != 10 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFDBudget: the limit derived from the fd limit is the largest whose
// need fits, and counts the accept queues and pipes.
func TestFDBudget(t *testing.T) {
	b := FDBudget{Limit: 20000, Open: 10, Listeners: 2, Backlog: 512}
	n := b.MaxConns()
	if b.Need(n) > b.Limit || b.Need(n+1) <= b.Limit {
		t.Fatalf("MaxConns %d: need %d, need of one more %d, limit %d", n, b.Need(n), b.Need(n+1), b.Limit)
	}
	if want := uint64(2*(n+2*513) + 2*relay.PipeLimit(n) + 10 + fdReserve); b.Need(n) != want {
		t.Fatalf("need %d, want %d", b.Need(n), want)
	}
	if (FDBudget{Limit: 100, Listeners: 2, Backlog: 512}).MaxConns() != 0 {
		t.Fatal("100 fds cannot hold a connection and two accept queues")
	}
	t.Logf("RLIMIT_NOFILE 20000: max_conns %d", n)
}

// TestFitFDs: an asked limit must fit the fd limit, and the error says by
// how much it does not; a derived one is the least of what the fd limit,
// memory and the largest maps hold, and says which set it.
func TestFitFDs(t *testing.T) {
	b := FDBudget{Limit: 20000, Open: 10, Listeners: 2, Backlog: 512}
	queued := b.Capacity(0)
	fits := b.MaxConns()
	for _, c := range []struct {
		name          string
		asked, memMax int
		mapMax        int
		max           int
		from          LimitSource
	}{
		{"asked", 5000, 0, 1 << 22, 5000, FromAsked},
		{"asked, whatever memory says", 5000, 10, 1 << 22, 5000, FromAsked},
		{"fd limit, memory unknown", 0, 0, 1 << 22, fits, FromFDLimit},
		{"memory", 0, 100, 1 << 22, 100, FromMemory},
		{"memory above the fd limit", 0, fits + 1, 1 << 22, fits, FromFDLimit},
		{"map limit", 0, 0, queued + 50, 50, FromMapLimit},
	} {
		l, err := FitFDs(c.asked, b, c.memMax, c.mapMax)
		if err != nil || l.Max != c.max || l.From != c.from || l.Budget != b {
			t.Errorf("%s: %+v, %v; want max %d from %s", c.name, l, err, c.max, c.from)
		}
	}
	if l := (Limit{Max: 100, Budget: b}); l.MapConns() != 100+queued {
		t.Errorf("maps for %d connections, want %d", l.MapConns(), 100+queued)
	}

	_, err := FitFDs(fits+1, b, 0, 1<<22)
	var short *FDShortError
	if !errors.As(err, &short) || short.Asked != fits+1 || short.Fits != fits || short.Limit != 20000 ||
		short.Need != b.Need(fits+1) || short.Need != uint64(2*(fits+1+queued)+short.Pipes+short.Other) || short.Other != 10+fdReserve {
		t.Fatalf("one more than fits: %#v", err)
	}
	if strings.Contains(err.Error(), "--") {
		t.Errorf("%q: a domain error names no flag", err)
	}

	tiny := FDBudget{Limit: 100, Listeners: 2, Backlog: 512}
	if _, err := FitFDs(0, tiny, 0, 1<<22); err == nil || err.Error() != fmt.Sprintf("RLIMIT_NOFILE 100 holds no connection (a daemon needs %d fds for its first): raise it", tiny.Need(1)) {
		t.Errorf("no room: %v", err)
	}
}

// TestFitMaps: an existing attachment's maps cannot grow: an asked limit
// must fit them, a derived one shrinks to them (accept queues included).
func TestFitMaps(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b := FDBudget{Limit: 1 << 20, Listeners: 2, Backlog: 512}
	queued := b.Capacity(0)
	asked := Limit{Max: 5000, From: FromAsked, Budget: b}
	derived := Limit{Max: 5000, From: FromFDLimit, Budget: b}

	if l, err := asked.FitMaps(5000+queued, log); err != nil || l != asked {
		t.Errorf("asked, maps just big enough: %+v, %v", l, err)
	}
	var short *MapsShortError
	if _, err := asked.FitMaps(3000+queued, log); !errors.As(err, &short) || *short != (MapsShortError{Asked: 5000, Capacity: 3000 + queued, Queued: queued}) {
		t.Errorf("asked, maps too small: %#v", err)
	}
	if l, err := derived.FitMaps(3000+queued, log); err != nil || l.Max != 3000 || l.From != FromMaps {
		t.Errorf("derived, maps too small: %+v, %v; want 3000 from the maps", l, err)
	}
	if _, err := derived.FitMaps(queued, log); !errors.As(err, &short) || *short != (MapsShortError{Capacity: queued, Queued: queued}) {
		t.Errorf("derived, maps holding only the queues: %#v", err)
	}
	for _, e := range []error{&MapsShortError{Asked: 1, Capacity: 2, Queued: 1}, &MapsShortError{Capacity: 2, Queued: 2}} {
		if strings.Contains(e.Error(), "--") || strings.Contains(e.Error(), "pepsal ") {
			t.Errorf("%q: a domain error names no flag and no command", e)
		}
	}
}

// TestListenBacklog: the listeners' backlog follows the limit within its
// range, as far as somaxconn lets it, and the fd budget and the maps count
// the queues the listeners really get.
func TestListenBacklog(t *testing.T) {
	for maxConns, want := range map[int]int{1: MinListenBacklog, 16: MinListenBacklog, 4096: MinListenBacklog, 8000: 1000, 1 << 22: MaxListenBacklog} {
		if got := ListenBacklog(maxConns); got != want {
			t.Errorf("ListenBacklog(%d) = %d, want %d", maxConns, got, want)
		}
	}
	b := FDBudget{Limit: 1 << 20, Open: 10, Listeners: 2, Backlog: 4096, BacklogCap: 4096} // somaxconn 4096
	for asked, want := range map[int]int{3: 512, 8000: 1000, 100000: 4096} {
		l, err := FitFDs(asked, b, 0, 1<<22)
		if err != nil || l.Budget.Backlog != want || l.MapConns() != asked+2*(want+1) {
			t.Errorf("--max-conns %d: %+v, %v; want backlog %d", asked, l, err, want)
		}
	}
	// Derived: the largest limit whose need, with its own queues, fits.
	small := FDBudget{Limit: 50000, Open: 10, Listeners: 2, Backlog: 4096, BacklogCap: 4096}
	l, err := FitFDs(0, small, 0, 1<<22)
	if err != nil || l.Budget.Backlog != ListenBacklog(l.Max) || l.Budget.Need(l.Max) > small.Limit || small.For(l.Max+1).Need(l.Max+1) <= small.Limit {
		t.Errorf("derived from 50000 fds: %+v, %v", l, err)
	}
	// Maps that hold fewer: a derived limit shrinks, and its queues with it.
	derived := Limit{Max: 50000, From: FromFDLimit, Budget: b.For(50000)}
	if l, err := derived.FitMaps(30000, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil || l.MapConns() > 30000 || l.Budget.Backlog >= derived.Budget.Backlog {
		t.Errorf("derived, maps for 30000: %+v, %v", l, err)
	}
}

// TestTightFDs: under a container's 1024 fds the accept queues shrink to a
// quarter of the free fds and the daemon holds a few hundred connections,
// where queues of MinListenBacklog would leave it none; a roomy limit
// leaves the queues alone.
func TestTightFDs(t *testing.T) {
	if fit := backlogForFDs(20000, 15, 2); fit < MinListenBacklog {
		t.Errorf("20000 fds: queues cut to %d", fit)
	}
	fit := backlogForFDs(1024, 15, 2)
	if fit < minTightBacklog || 2*2*(fit+1) > (1024-15-fdReserve)/4+4 {
		t.Fatalf("1024 fds: queues of %d", fit)
	}
	roomy := FDBudget{Limit: 1024, Open: 15, Listeners: 2, Backlog: MinListenBacklog, BacklogCap: MinListenBacklog}
	if n := roomy.MaxConns(); n != 0 {
		t.Fatalf("queues of %d in 1024 fds hold %d connections, want none", MinListenBacklog, n)
	}
	tight := FDBudget{Limit: 1024, Open: 15, Listeners: 2, Backlog: fit, BacklogCap: fit, TightFDs: true}
	n := tight.MaxConns()
	if n < 200 || tight.For(n).Need(n) > 1024 {
		t.Fatalf("1024 fds hold %d connections (need %d)", n, tight.For(n).Need(n))
	}
	if backlogForFDs(^uint64(0), 15, 2) < MinListenBacklog || backlogForFDs(10, 15, 2) != minTightBacklog {
		t.Error("an unlimited or hopeless limit")
	}
	t.Logf("RLIMIT_NOFILE 1024: queues of %d, max_conns %d, %d pipes", fit, n, relay.PipeLimit(n))
}
