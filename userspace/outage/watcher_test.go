// SPDX-License-Identifier: Apache-2.0

package outage

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
)

// fakeStalls is pepsal_stalled as a list; ages grow with the fake clock.
type fakeStalls struct {
	clock *time.Time
	at    map[netip.AddrPort]time.Time // when each leg last timed out
	st    map[netip.AddrPort]loader.Stall
}

func (f *fakeStalls) timeout(local, remote string, una uint32, n uint32) {
	l := netip.MustParseAddrPort(local)
	f.st[l] = loader.Stall{Local: l, Remote: netip.MustParseAddrPort(remote), SndUna: una, Timeouts: n}
	f.at[l] = *f.clock
}

func (f *fakeStalls) List(int) ([]loader.Stall, error) {
	var out []loader.Stall
	for l, st := range f.st {
		st.Age = f.clock.Sub(f.at[l])
		out = append(out, st)
	}
	return out, nil
}

func (f *fakeStalls) Forget(st loader.Stall) error { delete(f.st, st.Local); return nil }

type kick struct {
	st loader.Stall
	n  int
}

type fakeLink struct {
	probes []netip.Addr
	kicks  []kick
}

func (l *fakeLink) Probe(r netip.Addr, seq uint16) error { l.probes = append(l.probes, r); return nil }
func (l *fakeLink) Answers() <-chan Answer               { return nil }
func (l *fakeLink) Kick(st loader.Stall, n int) error {
	l.kicks = append(l.kicks, kick{st, n})
	return nil
}

func newTestWatcher() (*Watcher, *fakeStalls, *fakeLink, *time.Time) {
	clock := time.Unix(1000, 0)
	fs := &fakeStalls{clock: &clock, at: map[netip.AddrPort]time.Time{}, st: map[netip.AddrPort]loader.Stall{}}
	fl := &fakeLink{}
	w := &Watcher{Stalls: fs, Link: fl, Every: 100 * time.Millisecond, Silence: 2 * time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: func() time.Time { return clock }, remotes: map[netip.Addr]*remote{}}
	return w, fs, fl, &clock
}

// advance runs ticks for d.
func advance(w *Watcher, clock *time.Time, d time.Duration) {
	for end := clock.Add(d); clock.Before(end); {
		*clock = clock.Add(w.Every)
		w.tick()
	}
}

// An outage: the stalled leg's remote is probed, found silent after 2 s,
// and its first answer kicks the leg with one error per timeout (plus one)
// quoting the recorded byte; the outage is counted with its length.
func TestOutageKicksOnReturn(t *testing.T) {
	w, fs, fl, clock := newTestWatcher()
	fs.timeout("10.0.0.1:40000", "10.9.0.2:4443", 1234, 3)
	fs.timeout("10.0.0.1:40001", "10.9.0.2:4443", 99, 30)
	advance(w, clock, time.Second)
	if len(fl.probes) == 0 || fl.probes[0] != netip.MustParseAddr("10.9.0.2") {
		t.Fatalf("probes %v, want the stalled legs' remote", fl.probes)
	}
	if s := w.Snapshot(); s.Probing != 1 || s.Down != 0 {
		t.Fatalf("after 1 s: %+v, want one remote probed, not yet down", s)
	}
	advance(w, clock, 1500*time.Millisecond)
	if s := w.Snapshot(); s.Down != 1 {
		t.Fatalf("after 2.5 s of silence: %+v, want the remote down", s)
	}
	advance(w, clock, 3*time.Second)
	w.answer(Answer{From: netip.MustParseAddr("10.9.0.2"), Seq: w.remotes[netip.MustParseAddr("10.9.0.2")].seq - 1, At: clock.Add(50 * time.Millisecond)})
	if len(fl.kicks) != 2 {
		t.Fatalf("kicks %+v, want both legs", fl.kicks)
	}
	for _, k := range fl.kicks {
		want := min(int(k.st.Timeouts)+1, maxKicks)
		if k.n != want {
			t.Errorf("leg %s kicked with %d errors, want %d", k.st.Local, k.n, want)
		}
	}
	if len(fs.st) != 0 {
		t.Errorf("kicked legs still recorded: %v", fs.st)
	}
	s := w.Snapshot()
	if s.Outages != 1 || s.Kicked != 2 || s.Last < 5*time.Second || s.Last > 6*time.Second || s.LastRecovery != 50*time.Millisecond {
		t.Errorf("stats %+v: want one outage of about 5.5 s, 2 kicked, answered in 50 ms", s)
	}
	advance(w, clock, 200*time.Millisecond)
	if s := w.Snapshot(); s.Probing != 0 {
		t.Errorf("still probing %d remotes with no stalled leg", s.Probing)
	}
}

// A remote that answers is not down: its legs are never kicked, and a
// timeout it outlived by more than the silence is forgotten.
func TestAnsweringRemoteNotKicked(t *testing.T) {
	w, fs, fl, clock := newTestWatcher()
	fs.timeout("10.0.0.1:40000", "10.9.0.2:4443", 1, 1)
	r := netip.MustParseAddr("10.9.0.2")
	for range 40 {
		advance(w, clock, w.Every)
		if rs := w.remotes[r]; rs != nil {
			w.answer(Answer{From: r, Seq: rs.seq - 1, At: clock.Add(30 * time.Millisecond)})
		}
	}
	if len(fl.kicks) != 0 || w.Snapshot().Outages != 0 {
		t.Fatalf("kicks %v, stats %+v: an answering remote had no outage", fl.kicks, w.Snapshot())
	}
	if len(fs.st) != 0 {
		t.Errorf("a timeout 4 s older than the remote's answers is still recorded")
	}
}

// Legs that are not the peer's, over IPv6, or older than any back-off are
// forgotten, never probed.
func TestStallsNotProbed(t *testing.T) {
	w, fs, fl, clock := newTestWatcher()
	w.Peer = func(st loader.Stall) bool { return st.Local.Port() == 4443 }
	fs.timeout("10.0.0.1:40000", "10.9.0.2:1234", 1, 1)  // not a warm path
	fs.timeout("[fd00::1]:4443", "[fd00::2]:5555", 1, 1) // IPv6
	fs.timeout("10.0.0.1:4443", "10.9.0.3:5555", 1, 1)   // the peer's
	*clock = clock.Add(stallFresh + time.Second)
	fs.timeout("10.0.0.1:4443", "10.9.0.4:5555", 1, 1) // the peer's, fresh
	w.tick()
	if len(fl.probes) != 1 || fl.probes[0] != netip.MustParseAddr("10.9.0.4") {
		t.Errorf("probes %v, want only the fresh peer leg's remote", fl.probes)
	}
	if len(fs.st) != 1 || w.Snapshot().NotIPv4 != 1 {
		t.Errorf("recorded %v (not-IPv4 %d), want only the fresh peer leg kept", fs.st, w.Snapshot().NotIPv4)
	}
}

// The packets: an echo request and a host unreachable with valid
// checksums, the unreachable quoting the leg as tcp_v4_err reads it.
func TestPackets(t *testing.T) {
	m := echoRequest(0x1234, 7)
	if Checksum(m) != 0 || m[0] != icmpEchoRequest || binary.BigEndian.Uint16(m[4:]) != 0x1234 {
		t.Errorf("echo request % x", m)
	}
	m[0] = icmpEchoReply
	if seq, ok := parseEchoReply(m, 0x1234); !ok || seq != 7 {
		t.Errorf("echo reply: seq %d, %v", seq, ok)
	}
	if _, ok := parseEchoReply(m, 0x4321); ok {
		t.Errorf("another pinger's reply taken")
	}
	if _, ok := parseEchoReply(m[:7], 0x1234); ok {
		t.Errorf("a short message taken")
	}
	st := loader.Stall{Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.9.0.2:4443"), SndUna: 0xdeadbeef}
	u, err := unreachable(st)
	if err != nil {
		t.Fatal(err)
	}
	q := u[8:]
	if Checksum(u) != 0 || Checksum(q[:20]) != 0 || u[0] != 3 || u[1] != 1 || q[9] != 6 ||
		netip.AddrFrom4([4]byte(q[12:16])) != st.Local.Addr() || netip.AddrFrom4([4]byte(q[16:20])) != st.Remote.Addr() ||
		binary.BigEndian.Uint16(q[20:]) != 40000 || binary.BigEndian.Uint16(q[22:]) != 4443 || binary.BigEndian.Uint32(q[24:]) != 0xdeadbeef {
		t.Errorf("unreachable % x", u)
	}
	if _, err := unreachable(loader.Stall{Local: netip.MustParseAddrPort("[fd00::1]:1"), Remote: netip.MustParseAddrPort("[fd00::2]:2")}); err == nil {
		t.Errorf("an IPv6 leg got an ICMPv4 error")
	}
}
