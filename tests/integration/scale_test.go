package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/pepsal/pepsal/tests/testbed"
)

// pinnedMap opens one of the daemon's pinned maps in ns's pin directory.
func pinnedMap(t *testing.T, ns *testbed.NS, name string) *ebpf.Map {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatalf("stat %s: %v", ns.Path(), err)
	}
	path := filepath.Join("/sys/fs/bpf/pepsal", fmt.Sprintf("netns-%d", st.Ino), name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatalf("open pinned map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// mapEntries counts a hash map's keys.
func mapEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	var k uint64
	v := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate map: %v", err)
	}
	return n
}

// fillMap puts dummy keys (never a socket cookie: cookies count up from 1)
// into m until it holds all but room entries.
func fillMap(t *testing.T, m *ebpf.Map, room int) {
	t.Helper()
	v := make([]byte, m.ValueSize())
	for i := mapEntries(t, m); i < int(m.MaxEntries())-room; i++ {
		if err := m.Update(uint64(1<<62+i), v, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("fill %d/%d: %v", i, m.MaxEntries(), err)
		}
	}
}

// splitStats is the part of the daemon's status that the splitter counts.
type splitStatsJSON struct {
	LocalFailed           uint64 `json:"local_failed"`
	UpstreamTuningSkipped uint64 `json:"upstream_tuning_skipped"`
	Stats                 struct {
		Accepted       uint64 `json:"accepted"`
		UpstreamFailed uint64 `json:"upstream_failed"`
		Reset          uint64 `json:"reset"`
	} `json:"stats"`
}

func (b *bed) splitStats() splitStatsJSON {
	b.t.Helper()
	var s struct {
		Daemon splitStatsJSON `json:"daemon"`
	}
	r := b.pepsal("status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		b.t.Fatalf("status: %v %s", err, r.stdout)
	}
	return s.Daemon
}

// echoConns opens n connections through the router to peerServer at addr
// and checks an echo on each; they stay open until the test ends.
func echoConns(t *testing.T, b *bed, addr string, n int) {
	t.Helper()
	for i := range n {
		c := mustDial(t, b.Client, addr)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := readLine(c); err != nil {
			t.Fatalf("connection %d greeting: %v", i, err)
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatalf("connection %d write: %v", i, err)
		}
		if got, err := readLine(c); err != nil || got != "ping" {
			t.Fatalf("connection %d echo %q: %v", i, got, err)
		}
		c.SetDeadline(time.Time{})
	}
}

// TestUpstreamEntriesOnlyWhileConnecting (issue #10 case 5): a server leg
// is in pepsal_upstream, the map sock_ops reads to know it, only from its
// socket's creation to its establishment, and only when the server leg has
// initial windows to set: live connections hold no entry, so the map's size
// does not cap them. Before: one entry per live connection, tuning or not.
func TestUpstreamEntriesOnlyWhileConnecting(t *testing.T) {
	const n = 50
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no tuning", nil},
		{"server initcwnd", []string{"--server-initcwnd", "20"}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			b := newBed(t)
			peerServer(t, b.Server, hostPort(testbed.ServerV4, 8081))
			b.startPepsal(append([]string{"--iface", testbed.RouterClientIf}, tc.args...)...)
			upstream := pinnedMap(t, b.Router, "pepsal_upstream")
			echoConns(t, b, hostPort(testbed.ServerV4, 8081), n)
			if got := mapEntries(t, upstream); got != 0 {
				t.Errorf("%d established connections hold %d pepsal_upstream entries, want 0", n, got)
			}
			if tc.args != nil {
				// Deleting at establishment must not lose the tuning.
				if got := b.status().counter("tune_init_cwnd"); got != n {
					t.Errorf("tune_init_cwnd = %d, want %d (one per server leg)", got, n)
				}
			}
		})
	}
}

// TestUpstreamMapFullFailsOpen (issue #10 case 5): when pepsal_upstream is
// full, a server leg is dialed without its initial windows and the client's
// connection is split and works; the skip is counted. Before: the client was
// reset ("key too big for map").
func TestUpstreamMapFullFailsOpen(t *testing.T) {
	b := newBed(t)
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8081))
	b.startPepsal("--iface", testbed.RouterClientIf, "--server-initcwnd", "20")
	fillMap(t, pinnedMap(t, b.Router, "pepsal_upstream"), 0)
	const n = 3
	echoConns(t, b, hostPort(testbed.ServerV4, 8081), n)
	s := b.splitStats()
	if s.Stats.Accepted != n || s.Stats.UpstreamFailed != 0 || s.Stats.Reset != 0 {
		t.Errorf("stats %+v: want %d accepted, none failed or reset", s.Stats, n)
	}
	if s.UpstreamTuningSkipped != n {
		t.Errorf("upstream_tuning_skipped = %d, want %d", s.UpstreamTuningSkipped, n)
	}
}

// TestRelayMapsFullFallBack (issue #10 case 6): with pepsal_relay_dirs one
// entry short of full, the kernel relay's Prepare fails half way (the first
// direction fits, the second does not); the connection must fall back to
// userspace and work, say why in `pepsal conns`, and leave no entry of its
// own in pepsal_relay_dirs or pepsal_relay_user. Before 4021e99: one entry
// of each leaked per connection until detach.
func TestRelayMapsFullFallBack(t *testing.T) {
	b := newBed(t)
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8081))
	b.startPepsal("--iface", testbed.RouterClientIf, "--relay", "sockmap")
	dirs, user := pinnedMap(t, b.Router, "pepsal_relay_dirs"), pinnedMap(t, b.Router, "pepsal_relay_user")
	fillMap(t, dirs, 1)
	full := int(dirs.MaxEntries()) - 1
	const n = 3
	echoConns(t, b, hostPort(testbed.ServerV4, 8081), n)

	var conns []struct {
		Relay string `json:"relay"`
	}
	r := b.pepsal("conns", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &conns); err != nil {
		t.Fatalf("conns: %v\n%s", err, r.stdout)
	}
	if len(conns) != n {
		t.Fatalf("conns lists %d connections, want %d:\n%s", len(conns), n, r.stdout)
	}
	for _, c := range conns {
		if !strings.HasPrefix(c.Relay, "userspace: ") || !strings.Contains(c.Relay, "pepsal_relay_dirs") {
			t.Errorf("relay %q: want a userspace fallback that names pepsal_relay_dirs", c.Relay)
		}
	}
	if d, u := mapEntries(t, dirs), mapEntries(t, user); d != full || u != 0 {
		t.Errorf("with %d live fallback connections: %d pepsal_relay_dirs entries (want the %d dummies), %d pepsal_relay_user (want 0)", n, d, full, u)
	}
}

// TestLocalFailureAccounted (issue #10 case 4): a connection that cannot be
// split because this host ran out of something (here local ports: the
// router's ephemeral range holds 4) is reset and counted as local_failed,
// not upstream_failed, and a storm of them logs a few lines, not one per
// client. Before: upstream_failed and a line per client.
func TestLocalFailureAccounted(t *testing.T) {
	b := newBed(t)
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8081))
	if err := b.Router.Sysctl("net.ipv4.ip_local_port_range", "40000 40003"); err != nil {
		t.Fatal(err)
	}
	d := b.startPepsal()
	const tries = 30
	ok, failed := 0, 0
	for range tries {
		c, err := dial(b.Client, hostPort(testbed.ServerV4, 8081), 5*time.Second)
		if err != nil {
			failed++ // reset while connecting: pepsal's answer came first
			continue
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := readLine(c); err != nil {
			if !isReset(err) {
				t.Fatalf("want a greeting or a reset, got %v", err)
			}
			failed++
			continue
		}
		ok++
	}
	if ok == 0 || ok > 4 || failed == 0 {
		t.Fatalf("%d connections split, %d reset: want 1-4 split (4 local ports), the rest reset", ok, failed)
	}
	// The resets are counted once the daemon is done with them.
	var s splitStatsJSON
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if s = b.splitStats(); s.LocalFailed == uint64(failed) {
			break
		}
	}
	if s.LocalFailed != uint64(failed) || s.Stats.UpstreamFailed != 0 {
		t.Errorf("local_failed %d, upstream_failed %d; want %d and 0", s.LocalFailed, s.Stats.UpstreamFailed, failed)
	}
	lines := strings.Count(d.stderr.String(), "short of a resource")
	if lines == 0 || lines > 3 {
		t.Errorf("%d resets logged %d lines, want 1-3 (rate-limited)", failed, lines)
	}
	if lines > 3 || strings.Count(d.stderr.String(), "upstream connect failed") > 0 {
		t.Errorf("local failures logged per client:\n%s", d.stderr.String())
	}
}
