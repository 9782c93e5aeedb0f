// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestKilledDaemonFailsOpenAndDetachCleans: after SIGKILL new connections are
// forwarded unsplit, and `pepsal detach` leaves nothing behind.
func testKilledDaemonFailsOpenAndDetachCleans(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	before := netState(t, b.Router)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}
	d := b.startPepsal()
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.routerServer {
			t.Fatalf("%s: not split while running: %s", f.name, got)
		}
	}
	d.Stop(syscall.SIGKILL, 5*time.Second)
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.client {
			t.Errorf("%s after SIGKILL: server saw %s, want the client (unsplit)", f.name, got)
		}
	}
	r := b.pepsal("status", "--json")
	if r.code == 0 {
		t.Errorf("status exit 0 with no daemon:\n%s", r.stdout)
	}
	if got := b.status().counter("syn_bypass_no_listener"); got != 2 {
		t.Errorf("syn_bypass_no_listener = %d, want 2", got)
	}
	if during := netState(t, b.Router); during == before {
		t.Fatal("state unchanged while attached: the comparison cannot see anything")
	}
	st := b.status()
	// The relay verdict is loaded only for a daemon that relays in the
	// kernel: a splice daemon (or a kernel that cannot) never loads it.
	want := []string{"pepsal_classify", "pepsal_steer", "pepsal_tune"}
	if cfg.relayInUse(t) == "sockmap" {
		want = append(want, "pepsal_verdict")
	}
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(st.Programs)); !slices.Equal(got, want) {
		t.Errorf("programs %v, want %v", got, want)
	}
	if r := b.pepsal("detach"); r.code != 0 {
		t.Fatalf("detach: %d %s", r.code, r.stderr)
	}
	// A program still attached anywhere (the sock_ops one sits on the root
	// cgroup, outside the namespace) would still exist. The kernel frees a
	// released program after an RCU grace period, and any process listing
	// programs (bpftool) holds it for a moment: allow two seconds.
	for name, id := range st.Programs {
		deadline := time.Now().Add(2 * time.Second)
		for {
			out, err := exec.Command("bpftool", "prog", "show", "id", fmt.Sprint(id)).CombinedOutput()
			if err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s (id %d) survives detach:\n%s", name, id, out)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if after := netState(t, b.Router); after != before {
		t.Errorf("detach left traces:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if r := b.pepsal("detach"); r.code != 0 {
		t.Errorf("second detach: %d %s", r.code, r.stderr)
	}
}

// TestSIGTERMDetaches: SIGTERM (and SIGINT) stop the daemon with exit 0 and
// remove what it attached; connections go on unsplit.
func testSIGTERMDetaches(t *testing.T, cfg suite) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			b := newBed(t, cfg)
			before := netState(t, b.Router)
			peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
			d := b.startPepsal()
			if err := d.Stop(sig, 10*time.Second); err != nil {
				t.Fatalf("exit after %s: %v", sig, err)
			}
			if after := netState(t, b.Router); after != before {
				t.Errorf("left traces after %s:\nbefore:\n%s\nafter:\n%s", sig, before, after)
			}
			if got := peerSeen(t, b.Client, hostPort(testbed.ServerV4, 8080)); got != testbed.ClientV4 {
				t.Errorf("after %s: server saw %s, want the client", sig, got)
			}
		})
	}
}

// TestAttachIdempotentAndDetach: attach persists without a daemon, twice is
// the same as once, `run` without --iface serves on it, detach undoes it.
// Both tc attachment modes.
func testAttachIdempotentAndDetach(t *testing.T, cfg suite) {
	for _, mode := range []string{"tcx", "clsact"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "tcx" {
				requireTCX(t)
			}
			b := newBed(t, cfg)
			before := netState(t, b.Router)
			peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
			args := []string{"attach", "--iface", testbed.RouterClientIf, "--tc-mode", mode}
			if r := b.pepsal(args...); r.code != 0 {
				t.Fatalf("attach: %s", r.stderr)
			}
			once := netState(t, b.Router)
			if r := b.pepsal(args...); r.code != 0 {
				t.Fatalf("second attach: %s", r.stderr)
			}
			if twice := netState(t, b.Router); twice != once {
				t.Errorf("second attach changed state:\nonce:\n%s\ntwice:\n%s", once, twice)
			}
			r := b.pepsal("status", "--json")
			if r.code == 0 || !strings.Contains(r.stdout, `"attached": true`) || !strings.Contains(r.stdout, `"tc_mode": "`+mode+`"`) {
				t.Errorf("status without daemon: exit %d\n%s", r.code, r.stdout)
			}
			// Attached but not serving: forwarded unsplit.
			if got := peerSeen(t, b.Client, hostPort(testbed.ServerV4, 8080)); got != testbed.ClientV4 {
				t.Errorf("attached without daemon: server saw %s, want the client", got)
			}
			d := b.startPepsal() // no --iface: serve on the attachment
			if got := peerSeen(t, b.Client, hostPort(testbed.ServerV4, 8080)); got != testbed.RouterServerV4 {
				t.Errorf("run on attachment: server saw %s, want the router", got)
			}
			if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			// As it found it, but for the relay verdict a kernel-relay
			// daemon loads: it stays pinned for the next daemon (a socket
			// inserted after it left the map would get no verdict) until
			// `pepsal detach`.
			after := netState(t, b.Router)
			if cfg.relayInUse(t) == "sockmap" {
				after = withoutLines(after, "/pepsal_verdict")
			}
			if after != once {
				t.Errorf("run without --iface must leave the attachment:\n%s", after)
			}
			if r := b.pepsal("detach"); r.code != 0 {
				t.Fatalf("detach: %s", r.stderr)
			}
			if after := netState(t, b.Router); after != before {
				t.Errorf("detach left traces:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestTwoNamespacesDoNotCollide: daemons in two namespaces of one host have
// their own pins and each status sees its own daemon.
func testTwoNamespacesDoNotCollide(t *testing.T, cfg suite) {
	a, b := newBed(t, cfg), newBed(t, cfg)
	a.startPepsal()
	b.startPepsal()
	sa, sb := a.pepsal("status", "--json"), b.pepsal("status", "--json")
	if sa.code != 0 || sb.code != 0 {
		t.Fatalf("status: %d %d", sa.code, sb.code)
	}
	pinDir := func(s string) string {
		i := strings.Index(s, `"pin_dir": "`)
		if i < 0 {
			return ""
		}
		rest := s[i+len(`"pin_dir": "`):]
		return rest[:strings.IndexByte(rest, '"')]
	}
	if pa, pb := pinDir(sa.stdout), pinDir(sb.stdout); pa == "" || pa == pb {
		t.Errorf("pin dirs %q and %q must differ", pa, pb)
	}
	if r := a.pepsal("detach"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if r := b.pepsal("status"); r.code != 0 {
		t.Errorf("detaching one namespace broke the other: %s", r.stdout)
	}
}

// TestBadInputOneLineNothingAttached: each mistake gives one line on stderr, a non-zero exit, and
// leaves nothing attached.
func TestBadInputOneLineNothingAttached(t *testing.T) {
	b := newBed(t, defaultSuite())
	// An unprivileged user must be able to execute the binary to be refused by it.
	os.Chmod(filepath.Dir(pepsalBin), 0o755)
	before := netState(t, b.Router)
	iface := testbed.RouterClientIf
	cases := []struct {
		name string
		args []string
		want string
		pre  func() func()
	}{
		{name: "unknown iface", args: []string{"run", "--iface", "nosuch0"}, want: `unknown interface "nosuch0"`},
		{name: "one bad iface of two", args: []string{"run", "--iface", iface, "--iface", "nosuch0"}, want: `unknown interface "nosuch0"`},
		{name: "bad CIDR", args: []string{"run", "--iface", iface, "--exclude", "10.0.0.0/33"}, want: "bad --exclude"},
		{name: "bad port", args: []string{"run", "--iface", iface, "--ports", "0"}, want: "bad --ports"},
		{name: "reversed range", args: []string{"run", "--iface", iface, "--ports", "90-80"}, want: "reversed"},
		{name: "port word", args: []string{"run", "--iface", iface, "--ports", "http"}, want: "bad --ports"},
		{name: "bad relay", args: []string{"run", "--iface", iface, "--relay", "magic"}, want: "--relay must be"},
		{name: "bad timeout", args: []string{"run", "--iface", iface, "--connect-timeout", "-1s"}, want: "--connect-timeout"},
		{name: "attach without iface", args: []string{"attach"}, want: "needs at least one --iface"},
		{name: "run on nothing", args: []string{"run"}, want: "nothing is attached"},
		{name: "attach bad iface", args: []string{"attach", "--iface", "nosuch0"}, want: "unknown interface"},
		{name: "not root", args: []string{"run", "--iface", iface}, want: "run as root"},
		{name: "listener port in use", args: []string{"run", "--iface", iface}, want: "listener port in use", pre: func() func() {
			ln := listen(t, b.Router, "127.0.0.1:5000")
			return func() { ln.Close() }
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.pre != nil {
				defer c.pre()()
			}
			var r result
			if c.name == "not root" {
				args := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", pepsalBin}, c.args...)
				r = runCmdIn(b.Router, "setpriv", args...)
			} else {
				r = b.pepsal(c.args...)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "pepsal: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("exit %d, stderr %q: want non-zero and one line with %q", r.code, r.stderr, c.want)
			}
			if after := netState(t, b.Router); after != before {
				t.Errorf("left something attached:\n%s", after)
			}
		})
	}
}
