package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
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
