// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/report"
)

// The table's totals follow what was added and how each connection ended:
// outcomes, bytes (kernel bytes counted apart), fallbacks and refused
// destinations by reason.
func TestTableAccounting(t *testing.T) {
	tb := NewTable()
	cl := netip.MustParseAddrPort("10.0.0.1:40000")
	sv := netip.MustParseAddrPort("192.0.2.1:80")

	done := tb.Add(cl, sv, conn.Kernel)
	reset := tb.Add(cl, sv, conn.Splice)
	failed := tb.Add(cl, sv, conn.Splice)
	loop := tb.Add(cl, sv, conn.Splice)
	denied := tb.Add(cl, sv, conn.Splice)
	fellBack := tb.Add(cl, sv, conn.Kernel)
	partial := tb.Add(cl, sv, conn.Kernel)
	live := tb.Add(cl, sv, conn.Splice)
	if done.ID == reset.ID || live.ID <= done.ID {
		t.Fatalf("ids %d, %d, ..., %d: want distinct and increasing", done.ID, reset.ID, live.ID)
	}
	if n := tb.Len(); n != 8 {
		t.Fatalf("Len %d after 8 adds", n)
	}

	// A kernel-relayed connection: its final counts include the kernel's.
	done.SetMoved(conn.Moved{ToServer: 100, ToClient: 1000, KernelToServer: 60, KernelToClient: 900})
	reset.AddMoved(7, 3)
	fellBack.SetRelay(nettest.RelayState(t, "userspace: client: insert into pepsal_relay: no space left"))
	fellBack.AddMoved(5, 0)
	partial.SetRelay(nettest.RelayState(t, "userspace: first bytes not read whole"))
	live.AddMoved(11, 13) // still open: counted only when it ends

	tb.Remove(done, conn.Completed)
	tb.Remove(reset, conn.WasReset)
	tb.Remove(failed, conn.UpstreamFailed)
	tb.Remove(loop, conn.LoopRefused)
	tb.Deny(denied, conn.OwnAddress)
	tb.Remove(fellBack, conn.Completed)
	tb.Remove(partial, conn.WasReset)

	s := tb.Stats()
	want := report.Stats{
		Accepted: 8, Active: 1, Completed: 2, Reset: 2, UpstreamFailed: 1, LoopRefused: 1, DestDenied: 1, Fallback: 2,
		BytesToServer: 100 + 7 + 5, BytesToClient: 1000 + 3, KernelBytes: 60 + 900,
	}
	got := s
	got.FallbackByReason, got.DestDeniedByReason = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stats\n got %+v\nwant %+v", got, want)
	}
	for _, reason := range conn.FallbackReasons() {
		r := reason.String()
		n, ok := s.FallbackByReason[r]
		if !ok {
			t.Errorf("reason %q missing from %v", r, s.FallbackByReason)
		}
		if w := map[string]uint64{"insert_failed": 1, "first_bytes_partial": 1}[r]; n != w {
			t.Errorf("fallbacks %q = %d, want %d", r, n, w)
		}
	}

	for _, reason := range conn.DenyReasons() {
		if n, ok := s.DestDeniedByReason[reason.String()]; !ok || n != map[conn.DenyReason]uint64{conn.OwnAddress: 1}[reason] {
			t.Errorf("refused %q = %d (listed: %v), want 1 own_address and 0 of the others", reason, n, ok)
		}
	}

	snap := tb.Snapshot()
	if len(snap) != 1 || snap[0].ID != live.ID || snap[0].BytesToServer != 11 || snap[0].BytesToClient != 13 || snap[0].State != "connecting" {
		t.Errorf("snapshot %+v: want only the live connection, its bytes and state", snap)
	}
	tb.Remove(live, conn.Completed)
	if s := tb.Stats(); s.Active != 0 || s.Completed != 3 || s.BytesToServer != 123 {
		t.Errorf("after the last remove: %+v", s)
	}
}

// Snapshot lists the oldest first, and a kernel relay's live counts while it
// runs.
func TestTableSnapshotOrderAndLiveCounts(t *testing.T) {
	tb := NewTable()
	var conns []*conn.Conn
	for range 5 {
		conns = append(conns, tb.Add(netip.AddrPort{}, netip.AddrPort{}, conn.Kernel))
	}
	live := func() conn.Moved { return conn.Moved{ToServer: 42, KernelToServer: 40} }
	conns[2].SetLiveMoved(live)
	tb.Remove(conns[0], conn.Completed)
	snap := tb.Snapshot()
	if len(snap) != 4 {
		t.Fatalf("%d in snapshot, want 4", len(snap))
	}
	for i := 1; i < len(snap); i++ {
		if snap[i-1].ID >= snap[i].ID {
			t.Fatalf("snapshot not oldest first: %d before %d", snap[i-1].ID, snap[i].ID)
		}
	}
	if snap[1].ID != conns[2].ID || snap[1].BytesToServer != 42 || snap[1].KernelBytesToServer != 40 {
		t.Errorf("live kernel counts not shown: %+v", snap[1])
	}
	// SetMoved ends the live view: the final counts are what is accounted.
	conns[2].SetMoved(conn.Moved{ToServer: 50, KernelToServer: 45})
	tb.Remove(conns[2], conn.Completed)
	if s := tb.Stats(); s.BytesToServer != 50 || s.KernelBytes != 45 {
		t.Errorf("final counts not accounted: %+v", s)
	}
}
