// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/pepsal/pepsal/userspace/conn"
)

// TestPerClientLimit: a client address is marked full at its share of
// diverted connections and cleared below its low-water mark; other
// addresses, IPv4 written either way, and the gateway's warm flows (Add)
// are counted apart or not at all; the daemon keeps counts only for
// addresses with live connections.
func TestPerClientLimit(t *testing.T) {
	var writes []string
	table := NewTable()
	a := NewAdmission(100, func(bool) error { return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.LimitPerClient(10, func(addr netip.Addr, full bool) error {
		writes = append(writes, fmt.Sprintf("%s=%v", addr, full))
		return nil
	})
	table.SetAdmission(a)
	busy := netip.MustParseAddrPort("10.0.0.1:1")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(busy.Addr().As16()), 2) // the same client, v4-mapped
	other := netip.MustParseAddrPort("[2001:db8::2]:1")
	dst := netip.MustParseAddrPort("192.0.2.1:80")
	var conns []*conn.Conn
	for i := range 9 {
		from := busy
		if i%2 == 1 {
			from = mapped
		}
		conns = append(conns, table.AddDiverted(from, dst, conn.Splice))
	}
	for range 20 { // another client, and warm flows of the busy one: not its share
		table.AddDiverted(other, dst, conn.Splice)
		table.Add(busy, dst, conn.Splice)
	}
	if fmt.Sprint(writes) != "[2001:db8::2=true]" {
		t.Fatalf("writes %v: want only the other client marked", writes)
	}
	conns = append(conns, table.AddDiverted(busy, dst, conn.Splice)) // 10
	if fmt.Sprint(writes[1:]) != "[10.0.0.1=true]" {
		t.Fatalf("at 10: writes %v", writes)
	}
	if s := table.Stats(); s.MaxConnsPerClient != 10 || s.LowWaterPerClient != 9 || s.ClientsAtLimit != 2 || s.ClientLimitTrips != 2 || s.Full {
		t.Fatalf("stats %+v", s)
	}
	table.Remove(conns[0], conn.Completed) // 9: at the mark, still full
	if len(writes) != 2 {
		t.Fatalf("at the low-water mark: writes %v", writes)
	}
	table.Remove(conns[1], conn.Completed) // 8
	if fmt.Sprint(writes[2:]) != "[10.0.0.1=false]" || table.Stats().ClientsAtLimit != 1 {
		t.Fatalf("below the low-water mark: writes %v", writes)
	}
	for _, c := range conns[2:] {
		table.Remove(c, conn.Completed)
	}
	table.mu.Lock()
	_, kept := a.perClient.live[busy.Addr()]
	table.mu.Unlock()
	if kept {
		t.Fatal("a client without live connections still has a count")
	}
}

// TestPerClientWriteFails: a mark the map refuses (full) is tried again at
// the client's next connection; without a limit nothing is counted.
func TestPerClientWriteFails(t *testing.T) {
	fail := true
	var marked []netip.Addr
	table := NewTable()
	a := NewAdmission(100, func(bool) error { return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.LimitPerClient(2, func(addr netip.Addr, full bool) error {
		if fail {
			return errors.New("map full")
		}
		marked = append(marked, addr)
		return nil
	})
	table.SetAdmission(a)
	c := netip.MustParseAddrPort("10.0.0.1:1")
	table.AddDiverted(c, c, conn.Splice)
	table.AddDiverted(c, c, conn.Splice)
	if len(marked) != 0 || table.Stats().ClientsAtLimit != 0 {
		t.Fatal("a refused mark counted")
	}
	fail = false
	table.AddDiverted(c, c, conn.Splice)
	if len(marked) != 1 || table.Stats().ClientsAtLimit != 1 {
		t.Fatalf("marks %v after the map took it", marked)
	}

	off := NewTable()
	b := NewAdmission(100, func(bool) error { return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	b.LimitPerClient(0, nil)
	off.SetAdmission(b)
	off.AddDiverted(c, c, conn.Splice)
	if s := off.Stats(); s.MaxConnsPerClient != 0 || len(off.diverted) != 0 {
		t.Fatalf("no limit: stats %+v, %d counted", s, len(off.diverted))
	}
}

// TestDefaultPerClient: a quarter of --max-conns, at least 256, off where
// that would not act before --max-conns.
func TestDefaultPerClient(t *testing.T) {
	for _, c := range []struct{ max, want int }{{20, 0}, {256, 0}, {257, 256}, {1000, 256}, {7913, 1978}, {100000, 25000}} {
		if got := DefaultPerClient(c.max); got != c.want {
			t.Errorf("DefaultPerClient(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}
