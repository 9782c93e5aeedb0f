// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// startPepsalLimited runs `prlimit --nofile=soft:hard pepsal run ...` in the
// router namespace, like startPepsalIn.
func startPepsalLimited(t *testing.T, b *bed, soft, hard int, args ...string) *daemon {
	t.Helper()
	cfg := b.suite
	cfg.wrapper = []string{"prlimit", fmt.Sprintf("--nofile=%d:%d", soft, hard)}
	return startPepsalIn(t, cfg, b.Router, args...)
}

// admitted opens a connection to peerServer at addr and says whether it was
// split (the server saw the router) or forwarded unsplit (it saw the
// client); either way the connection must work: greeting and echo.
func admitted(t *testing.T, b *bed, addr string) (*net.TCPConn, bool) {
	t.Helper()
	c, err := dial(b.Client, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	peer, err := readLine(c)
	if err != nil {
		t.Fatalf("greeting: %v (reset: %v)", err, isReset(err))
	}
	if _, err := c.Write([]byte("still there\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got, err := readLine(c); err != nil || got != "still there" {
		t.Fatalf("echo %q: %v", got, err)
	}
	switch peer {
	case testbed.RouterServerV4:
		return c, true
	case testbed.ClientV4:
		return c, false
	}
	t.Fatalf("server saw %q, neither the router nor the client", peer)
	return nil, false
}

// testAdmissionFailsOpen: a daemon whose fd limit holds a handful of
// connections splits that many; every further client is forwarded unsplit
// (and works) until the count falls below the low-water mark, then new
// connections are split again. The counters say how many took which path.
func testAdmissionFailsOpen(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	addr := hostPort(testbed.ServerV4, 8090)
	peerServer(t, b.Server, addr)
	// A hard limit of 300 fds holds ~35 connections once the (shortened)
	// accept queues, pipes and the reserve are counted; the daemon raises
	// its soft limit.
	startPepsalLimited(t, b, 200, 300, "--iface", testbed.RouterClientIf)
	st := b.daemonInfo().Stats
	if st.FDLimit != 300 {
		t.Errorf("daemon's fd limit %d: it did not raise its soft limit to the hard 300", st.FDLimit)
	}
	max, low := st.MaxConns, st.LowWater
	if max < 2 || max > 100 || low >= max {
		t.Fatalf("derived max_conns %d, low water %d: want a small limit from 300 fds", max, low)
	}
	base := b.status()

	const extra = 6
	var split, unsplit []*net.TCPConn
	for range max + extra {
		c, ok := admitted(t, b, addr)
		if ok {
			split = append(split, c)
		} else {
			unsplit = append(unsplit, c)
		}
	}
	after := b.status()
	diverted := after.counter("syn_diverted") - base.counter("syn_diverted")
	bypassed := after.counter("syn_bypass_full") - base.counter("syn_bypass_full")
	t.Logf("%s: max_conns %d (low water %d): %d split, %d unsplit; syn_diverted +%d, syn_bypass_full +%d",
		cfg.relay, max, low, len(split), len(unsplit), diverted, bypassed)
	if len(split) != max || len(unsplit) != extra {
		t.Fatalf("%d split and %d unsplit of %d clients, want %d and %d", len(split), len(unsplit), max+extra, max, extra)
	}
	if diverted != uint64(max) || bypassed != extra {
		t.Errorf("counters: syn_diverted +%d, syn_bypass_full +%d; want +%d, +%d", diverted, bypassed, max, extra)
	}
	if d := after.Daemon.Stats; d.Reset != 0 || d.UpstreamFailed != 0 {
		t.Errorf("daemon stats %+v: a client was reset", d)
	}
	if s := b.daemonInfo().Stats; !s.Full || s.Active != int64(max) {
		t.Errorf("status: full %v with %d active, want full with %d", s.Full, s.Active, max)
	}

	// Hysteresis: down to the low-water mark the limit still holds...
	waitActive := func(n int64) {
		for end := time.Now().Add(20 * time.Second); ; {
			if b.daemonInfo().Stats.Active == n {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("daemon never got down to %d connections", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, c := range split[:max-low] {
		c.Close()
	}
	split = split[max-low:]
	waitActive(int64(low))
	if _, ok := admitted(t, b, addr); ok {
		t.Fatalf("split at the low-water mark (%d live): want unsplit until below it", low)
	}
	// ...and below it new connections are split again.
	split[0].Close()
	waitActive(int64(low - 1))
	if _, ok := admitted(t, b, addr); !ok {
		t.Fatalf("unsplit below the low-water mark (%d live)", low-1)
	}
	for i, c := range append(split[1:], unsplit...) {
		if _, err := c.Write([]byte("end\n")); err != nil {
			t.Fatalf("connection %d at the end: %v", i, err)
		}
		if got, err := readLine(c); err != nil || got != "end" {
			t.Fatalf("connection %d at the end: %q %v", i, got, err)
		}
	}
}

// TestMaxConnsBadInput: a bad --max-conns, or one the fd limit cannot hold,
// stops `pepsal run` (and `attach`) with one line, before anything is touched.
func TestMaxConnsBadInput(t *testing.T) {
	b := newBed(t, defaultSuite())
	before := netState(t, b.Router)
	cases := []struct {
		name string
		cmd  []string
		want string
	}{
		{"zero", []string{pepsalBin, "run", "--iface", testbed.RouterClientIf, "--max-conns", "0"}, "bad --max-conns"},
		{"garbage", []string{pepsalBin, "run", "--iface", testbed.RouterClientIf, "--max-conns", "lots"}, "bad --max-conns"},
		{"negative", []string{pepsalBin, "attach", "--iface", testbed.RouterClientIf, "--max-conns=-5"}, "bad --max-conns"},
		{"fd limit too low", []string{"prlimit", "--nofile=1000:1000", pepsalBin, "run", "--iface", testbed.RouterClientIf, "--max-conns", "5000"}, "RLIMIT_NOFILE"},
		{"attach fd limit too low", []string{"prlimit", "--nofile=1000:1000", pepsalBin, "attach", "--iface", testbed.RouterClientIf, "--max-conns", "5000"}, "RLIMIT_NOFILE"},
		{"no connection fits", []string{"prlimit", "--nofile=120:120", pepsalBin, "run", "--iface", testbed.RouterClientIf}, "holds no connection"},
	}
	for _, tc := range cases {
		r := runCmdIn(b.Router, tc.cmd[0], tc.cmd[1:]...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code == 0 || len(lines) != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q: want a non-zero exit and one line with %q", tc.name, r.code, r.stderr, tc.want)
		}
		if after := netState(t, b.Router); after != before {
			t.Fatalf("%s changed the router:\nbefore:\n%s\nafter:\n%s", tc.name, before, after)
		}
	}
}

// TestMaxConnsSizesMaps: the per-connection BPF maps follow the limit
// (plus the accept queues), not a fixed 65,536; a daemon asking more than an
// existing attachment holds is refused.
func TestMaxConnsSizesMaps(t *testing.T) {
	b := newBed(t, defaultSuite())
	t.Cleanup(func() { b.pepsal("detach") })
	if r := b.pepsal("attach", "--iface", testbed.RouterClientIf, "--max-conns", "3000"); r.code != 0 {
		t.Fatalf("attach: %s", r.stderr)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(b.Router.Path(), &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	// The accept queues: 2 listeners x (backlog + 1), the backlog an eighth
	// of --max-conns, at least 512, at most somaxconn.
	somaxconn, err := b.Router.ReadSysctl("net.core.somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	backlog, err := strconv.Atoi(strings.TrimSpace(somaxconn))
	if err != nil {
		t.Fatal(err)
	}
	capacity := 3000 + 2*(min(512, backlog)+1)
	for name, perConn := range map[string]int{"pepsal_diverted": 2, "pepsal_relay": 2, "pepsal_relaydir": 2, "pepsal_relayusr": 2, "pepsal_upstream": 1} {
		out, err := b.Router.Command("bpftool", "-j", "map", "show", "pinned", fmt.Sprintf("/sys/fs/bpf/pepsal/netns-%d/%s", ino, name)).Output()
		if err != nil {
			t.Fatalf("bpftool map show %s: %v", name, err)
		}
		var m struct {
			MaxEntries int `json:"max_entries"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		if m.MaxEntries != perConn*capacity {
			t.Errorf("%s: %d entries, want %d (%d per connection)", name, m.MaxEntries, perConn*capacity, perConn)
		}
	}
	r := b.pepsal("run", "--max-conns", "5000")
	if r.code == 0 || !strings.Contains(r.stderr, "maps hold") {
		t.Errorf("run --max-conns 5000 on maps for 3000: exit %d, %q; want a refusal", r.code, r.stderr)
	}
}

// holdServer greets every connection; on port idlePort it then waits for
// the connection's end, on the others it writes until a write fails. Each
// connection's ending error goes to ends.
func holdServer(t *testing.T, ns *testbed.NS, addr string, write bool, ends chan<- error) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		fmt.Fprintf(c, "hello\n")
		buf := make([]byte, 64<<10)
		var err error
		for {
			if write {
				_, err = c.Write(buf)
			} else {
				_, err = c.Read(buf)
			}
			if err != nil {
				ends <- err
				return
			}
		}
	})
}

// keepaliveTimer matches ss's timer of a socket with keepalive armed.
var keepaliveTimer = regexp.MustCompile(`timer:\(keepalive,([0-9.]+)(ms|sec|min)`)

// testLegTimeouts: both legs carry pepsal's keepalive (not Go's 15 s), and
// a leg whose peer vanished is dropped after --user-timeout, with a reset to
// the other side: idle (keepalive probes unanswered) and while sending.
func testLegTimeouts(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	idleAddr, busyAddr := hostPort(testbed.ServerV4, 8091), hostPort(testbed.ServerV4, 8092)
	idleEnd, busyEnd := make(chan error, 4), make(chan error, 4)
	holdServer(t, b.Server, idleAddr, false, idleEnd)
	holdServer(t, b.Server, busyAddr, true, busyEnd)
	b.startPepsal("--iface", testbed.RouterClientIf, "--keepalive", "2s", "--user-timeout", "4s")

	idle := mustDial(t, b.Client, idleAddr)
	idle.SetDeadline(time.Now().Add(10 * time.Second))
	if l, err := readLine(idle); err != nil || l != "hello" {
		t.Fatalf("greeting %q: %v", l, err)
	}
	out, err := b.Router.Command("ss", "-tnoH", "state", "established").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	legs := 0
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, idleAddr) {
			continue
		}
		legs++
		m := keepaliveTimer.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("leg without keepalive: %s", line)
			continue
		}
		if v, _ := strconv.ParseFloat(m[1], 64); m[2] == "min" || m[2] == "sec" && v > 2 {
			t.Errorf("keepalive timer %s%s, want at most --keepalive 2s: %s", m[1], m[2], line)
		}
	}
	if legs != 2 {
		t.Fatalf("%d legs of the split connection in ss, want 2:\n%s", legs, out)
	}

	busy := mustDial(t, b.Client, busyAddr)
	busy.SetDeadline(time.Now().Add(10 * time.Second))
	if l, err := readLine(busy); err != nil || l != "hello" {
		t.Fatalf("greeting %q: %v", l, err)
	}
	// The client vanishes: its link goes down, nothing it had answers again.
	if out, err := b.Client.Command("ip", "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		t.Fatalf("link down: %v\n%s", err, out)
	}
	// Go's own keepalive would take 15 s + 9 x 15 s, the kernel's
	// retransmissions ~15 min: within 40 s only the user timeout acts.
	for _, leg := range []struct {
		what string
		end  chan error
	}{{"idle", idleEnd}, {"sending", busyEnd}} {
		select {
		case err := <-leg.end:
			if !isReset(err) {
				t.Errorf("%s connection: the server saw %v, want a reset", leg.what, err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("%s connection: the server saw nothing 40 s after the client vanished (--user-timeout 4s)", leg.what)
		}
	}
}

// testLostResetFoundByKeepalive: a client whose reset was lost on the link
// (nothing follows it: the connection was idle) is found by the client leg's
// keepalive, whose probe its host answers with a reset; pepsal then resets
// the server. Without keepalive the server would hold the connection for
// good, as it would without pepsal.
func testLostResetFoundByKeepalive(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	addr := hostPort(testbed.ServerV4, 8093)
	end := make(chan error, 1)
	holdServer(t, b.Server, addr, false, end)
	b.startPepsal("--iface", testbed.RouterClientIf, "--keepalive", "1s")

	c := mustDial(t, b.Client, addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if l, err := readLine(c); err != nil || l != "hello" {
		t.Fatalf("greeting %q: %v", l, err)
	}
	vanish(t, c)
	select {
	case err := <-end:
		if !isReset(err) {
			t.Errorf("the server saw %v, want a reset", err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("the server saw nothing 15 s after the client's reset was lost (--keepalive 1s)")
	}
}

// TestContainerFDLimit: under a container's RLIMIT_NOFILE of 1024:1024 the
// daemon starts with what fits (shorter accept queues, fewer splice
// pipes), says so in one warning, and splits.
func TestContainerFDLimit(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8090)
	peerServer(t, b.Server, addr)
	d := startPepsalLimited(t, b, 1024, 1024, "--iface", testbed.RouterClientIf)
	info := b.daemonInfo()
	if st := info.Stats; st.FDLimit != 1024 || st.MaxConns < 200 {
		t.Fatalf("fd limit %d, max_conns %d: want a few hundred connections in 1024 fds", st.FDLimit, st.MaxConns)
	}
	if info.Listen.Backlog >= 512 || info.Listen.Backlog < 16 {
		t.Errorf("accept queues of %d under 1024 fds", info.Listen.Backlog)
	}
	if _, split := admitted(t, b, addr); !split {
		t.Error("a connection under 1024 fds was not split")
	}
	waitFor(t, 5*time.Second, "the tight-fd warning", func() bool {
		return strings.Count(d.Output(), "the fd limit is tight") == 1
	})
}
