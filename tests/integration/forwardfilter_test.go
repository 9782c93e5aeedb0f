// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// The router's forward policy (issue #22 item 4): a split connection ends
// on the router and its server leg leaves from it, so forward-hook rules
// never see it. pepsal refuses to start where forwarded traffic is
// filtered, unless told that the policy is mirrored for its connections
// (README "Firewall") or to ignore it.

// Ports of the tests' server: blocked by the router's forward chain, and
// open.
const (
	blockedPort = 7401
	openPort    = 7402
)

// forwardDrop is the router's forward policy: one server port dropped.
var forwardDrop = fmt.Sprintf(`table inet guard {
	chain forward {
		type filter hook forward priority filter; policy accept;
		tcp dport %d drop
	}
}`, blockedPort)

// nft loads ruleset into ns's nftables.
func nft(t *testing.T, ns *testbed.NS, ruleset string) {
	t.Helper()
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v\n%s\n%s", ns.Name, err, out, ruleset)
	}
}

// pepsalBounded runs the CLI in ns; a command still running after 20 s
// (a `run` that serves instead of refusing) is stopped with SIGTERM and
// reported as exit -1, so that the test fails instead of waiting forever.
func pepsalBounded(ns *testbed.NS, args ...string) result {
	cmd := ns.Command(pepsalBin, args...) // nsenter execs pepsal: the pid is pepsal's
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return result{"", err.Error(), -1}
	}
	stop := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	defer stop.Stop()
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode() // -1 when a signal ended it
	} else if err != nil {
		code = -1
	}
	return result{out.String(), errb.String(), code}
}

// countingServer serves both ports on every server address: each
// connection is told the peer address the server saw, then echoed;
// accepts[port] counts what the server accepted.
func countingServer(t *testing.T, ns *testbed.NS) map[int]*atomic.Int64 {
	accepts := map[int]*atomic.Int64{}
	for _, port := range []int{blockedPort, openPort} {
		n := &atomic.Int64{}
		accepts[port] = n
		serve(t, ns, fmt.Sprintf("[::]:%d", port), func(c *net.TCPConn) {
			n.Add(1)
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			if ip := net.ParseIP(host); ip.To4() != nil {
				host = ip.To4().String()
			}
			fmt.Fprintf(c, "%s\n", host)
			io.Copy(c, c)
		})
	}
	return accepts
}

// echoes checks that a connection to addr carries bytes both ways, intact,
// and returns the peer address the server saw.
func echoes(t *testing.T, ns *testbed.NS, addr string) string {
	t.Helper()
	c := mustDial(t, ns, addr)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	seen, err := readLine(c)
	if err != nil {
		t.Fatalf("%s: read the server's line: %v", addr, err)
	}
	msg := []byte(strings.Repeat("forwarded intact ", 4096))
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("%s: echo of %d bytes: %v", addr, len(msg), err)
	}
	return seen
}

// blocked checks that no connection through addr gets data through: it
// is never established (a drop: a dial that times out), or established
// only with pepsal and then reset, the server never reached.
func blocked(t *testing.T, ns *testbed.NS, addr string) {
	t.Helper()
	c, err := dial(ns, addr, 3*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	_, _ = c.Write([]byte("knock"))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Errorf("%s: a blocked port answered %d bytes", addr, n)
	}
}

// TestForwardFilterCheckRefuses: where the router's forward chain drops a
// server port, `pepsal run` and `pepsal attach` refuse to start by
// default, in one line naming the chain, and leave nothing attached; the
// dropped port stays dropped and the other is forwarded. Once the chain is
// gone, the default starts, and status says it found nothing.
func TestForwardFilterCheckRefuses(t *testing.T) {
	b := newBed(t, defaultSuite())
	accepts := countingServer(t, b.Server)
	nft(t, b.Router, forwardDrop)
	before := netState(t, b.Router)
	want := "pepsal: the router filters forwarded traffic (inet guard forward: 1 rule); connections pepsal splits would bypass it"
	for _, args := range [][]string{
		{"run", "--iface", testbed.RouterClientIf},
		{"run", "--iface", testbed.RouterClientIf, "--forward-filter", "check"},
		{"attach", "--iface", testbed.RouterClientIf},
	} {
		r := pepsalBounded(b.Router, args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
			t.Errorf("%v: exit %d, stderr %q: want non-zero and one line %q...", args, r.code, r.stderr, want)
		}
		if after := netState(t, b.Router); after != before {
			t.Fatalf("%v left something attached:\n%s", args, after)
		}
	}
	for _, f := range families {
		blocked(t, b.Client, hostPort(f.server, blockedPort))
		if seen := echoes(t, b.Client, hostPort(f.server, openPort)); seen != f.client {
			t.Errorf("%s: the open port's server saw %s, want the client %s (forwarded)", f.name, seen, f.client)
		}
	}
	if n := accepts[blockedPort].Load(); n != 0 {
		t.Errorf("the server accepted %d connections on the dropped port", n)
	}

	// Nothing filters forwarded traffic any more: the default starts.
	if out, err := b.Router.Command("nft", "delete", "table", "inet", "guard").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v\n%s", err, out)
	}
	b.startPepsal()
	if ff := b.daemonInfo().ForwardFilter; ff == nil || ff.Mode != "check" || ff.Found != "none" || ff.ServerMark != 0 {
		t.Errorf("status forward_filter %+v, want check, none, no mark", ff)
	}
}

// TestForwardFilterMirrored: with --forward-filter=mirrored and the rules
// README "Firewall" gives, a port the forward chain drops stays out of
// reach with pepsal attached (the server never accepts), by the server
// legs' mark at the output hook and by the diverted mark at the input
// hook, while another port is split and carries data intact.
func TestForwardFilterMirrored(t *testing.T) {
	b := newBed(t, defaultSuite())
	accepts := countingServer(t, b.Server)
	nft(t, b.Router, forwardDrop)
	// The output-hook twin first: the client reaches pepsal, the server
	// leg is refused, the client reset.
	nft(t, b.Router, fmt.Sprintf(`table inet pepsal_guard {
	chain output {
		type filter hook output priority filter; policy accept;
		meta mark 0x5e9a2 tcp dport %d reject with tcp reset
	}
}`, blockedPort))
	b.startPepsal("--iface", testbed.RouterClientIf, "--forward-filter=mirrored", "--connect-timeout", "5s")
	ff := b.daemonInfo().ForwardFilter
	if ff == nil || ff.Mode != "mirrored" || ff.Found != "inet guard forward: 1 rule" || ff.ServerMark != 0x5e9a2 {
		t.Errorf("status forward_filter %+v, want mirrored, the guard chain, mark 0x5e9a2", ff)
	}
	for _, f := range families {
		blocked(t, b.Client, hostPort(f.server, blockedPort))
		if seen := echoes(t, b.Client, hostPort(f.server, openPort)); seen != f.routerServer {
			t.Errorf("%s: the open port's server saw %s, want the router %s (split)", f.name, seen, f.routerServer)
		}
	}
	if n := accepts[blockedPort].Load(); n != 0 {
		t.Errorf("output hook: the server accepted %d connections on the dropped port", n)
	}
	st := b.daemonInfo().Stats
	if st.UpstreamFailed < 2 || st.Accepted < 4 {
		t.Errorf("stats %+v: want the 2 blocked server legs failed, 4 connections accepted", st)
	}

	// The input-hook twin: the diverted SYN is dropped as forward drops
	// it; pepsal never accepts the connection.
	nft(t, b.Router, fmt.Sprintf(`table inet pepsal_guard {
	chain input {
		type filter hook input priority filter; policy accept;
		meta mark 0x5e9a1 tcp dport %d drop
	}
}`, blockedPort))
	accepted := b.daemonInfo().Stats.Accepted
	for _, f := range families {
		if c, err := dial(b.Client, hostPort(f.server, blockedPort), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("%s: input hook: a connection to the dropped port was established", f.name)
		}
	}
	if got := b.daemonInfo().Stats.Accepted; got != accepted {
		t.Errorf("input hook: pepsal accepted %d more connections", got-accepted)
	}
	if n := accepts[blockedPort].Load(); n != 0 {
		t.Errorf("input hook: the server accepted %d connections on the dropped port", n)
	}
}

// TestForwardFilterIgnore: --forward-filter=ignore starts where forwarded
// traffic is filtered, says so once as a warning, and status says the
// mode and what it found.
func TestForwardFilterIgnore(t *testing.T) {
	b := newBed(t, defaultSuite())
	nft(t, b.Router, forwardDrop)
	d := b.startPepsal("--iface", testbed.RouterClientIf, "--forward-filter", "ignore")
	ff := b.daemonInfo().ForwardFilter
	if ff == nil || ff.Mode != "ignore" || ff.Found != "inet guard forward: 1 rule" || ff.ServerMark != 0 {
		t.Errorf("status forward_filter %+v, want ignore, the guard chain, no mark", ff)
	}
	if n := strings.Count(d.Output(), "split connections bypass it (--forward-filter=ignore)"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, d.Output())
	}
}

// TestForwardFilterLegacyIptables: the legacy x_tables FORWARD chain
// (iptables-legacy) is read too: a drop rule there refuses the default,
// with the chain named; rules elsewhere in the filter table do not.
func TestForwardFilterLegacyIptables(t *testing.T) {
	b := newBed(t, defaultSuite())
	ipt := func(args ...string) {
		t.Helper()
		if out, err := b.Router.Command("iptables-legacy", args...).CombinedOutput(); err != nil {
			t.Fatalf("iptables-legacy %v: %v\n%s", args, err, out)
		}
	}
	ipt("-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	ipt("-A", "FORWARD", "-p", "tcp", "--dport", fmt.Sprint(blockedPort), "-j", "DROP")
	before := netState(t, b.Router)
	r := pepsalBounded(b.Router, "run", "--iface", testbed.RouterClientIf)
	want := "pepsal: the router filters forwarded traffic (ip filter FORWARD (legacy): 1 rule); "
	if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Errorf("exit %d, stderr %q: want non-zero and one line %q...", r.code, r.stderr, want)
	}
	if after := netState(t, b.Router); after != before {
		t.Fatalf("left something attached:\n%s", after)
	}
	ipt("-F", "FORWARD")
	b.startPepsal()
	if ff := b.daemonInfo().ForwardFilter; ff == nil || ff.Found != "none" {
		t.Errorf("status forward_filter %+v: want none (INPUT rules filter nothing forwarded)", ff)
	}
}
