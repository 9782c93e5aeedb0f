// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/vishvananda/netlink"
)

// Tests for the attach/detach lifecycle defects of issue #10: pins of a dead
// namespace adopted by a new one with the same inode number, panics on
// Attach's error paths, and a restarted daemon that did not own the
// attachment it re-attached.

func nsInode(t *testing.T, ns *testbed.NS) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatalf("stat %s: %v", ns.Path(), err)
	}
	return st.Ino
}

func pinDirFor(ino uint64) string { return fmt.Sprintf("/sys/fs/bpf/pepsal/netns-%d", ino) }

// newNS makes a bare namespace, deleted at cleanup.
func newNS(t *testing.T, prefix string) *testbed.NS {
	t.Helper()
	ns, err := testbed.NewNS(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// veth adds a veth pair, both ends up, inside ns (an interface to attach to
// that is not part of the bed's routing).
func veth(t *testing.T, ns *testbed.NS, name, peer string, index int) {
	t.Helper()
	err := ns.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name, la.Index = name, index
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
			return err
		}
		for _, n := range []string{name, peer} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("veth %s in %s: %v", name, ns.Name, err)
	}
}

// removeDeadPins is the last resort cleanup of a dead namespace's pins (if
// pepsal left them): the sock_ops link sits on the root cgroup, so it must be
// detached, not just unpinned.
func removeDeadPins(t *testing.T, dir string) {
	if !exists(dir) {
		return
	}
	if l, err := link.LoadPinnedLink(filepath.Join(dir, "link_tune_cgroup"), nil); err == nil {
		_ = l.Detach()
		l.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Errorf("remove %s: %v", dir, err)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// steerNetns is the namespace inode of the pinned sk_lookup link in dir.
func steerNetns(dir string) (uint32, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link_steer_netns"), nil)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	return info.NetNs().NetnsInode, nil
}

func programExists(id uint32) bool {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return false
	}
	p.Close()
	return true
}

// runBounded runs pepsal in ns and kills it after d: a command that should
// fail at once must not be mistaken for one that serves forever.
func runBounded(ns *testbed.NS, d time.Duration, args ...string) (r result, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.Path(), "--", pepsalBin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r = result{out.String(), errb.String(), 0}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else {
			r.code = -1
		}
	}
	return r, ctx.Err() != nil
}

// oneLineError checks a failed command: non-zero exit that is not a Go
// panic's (2), and exactly one line "pepsal: ..." containing want.
func oneLineError(t *testing.T, r result, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code == 0 || r.code == 2 || strings.Contains(r.stderr, "panic") || len(lines) != 1 ||
		!strings.HasPrefix(lines[0], "pepsal: ") || !strings.Contains(lines[0], want) {
		t.Errorf("exit %d, stderr %q: want a non-zero exit, no panic, one line with %q", r.code, r.stderr, want)
	}
}

// bedAround builds the usual client -- router -- server topology with router
// as the router namespace (testbed.NewTopology makes its own), whose daemons
// run with settings cfg.
func bedAround(t *testing.T, cfg suite, router *testbed.NS) *bed {
	t.Helper()
	cli, srv := newNS(t, "pit-cli"), newNS(t, "pit-srv")
	must := func(err error) {
		if err != nil {
			t.Fatalf("test bed: %v", err)
		}
	}
	must(testbed.Veth(cli, "eth0", router, testbed.RouterClientIf))
	must(testbed.Veth(srv, "eth0", router, testbed.RouterServerIf))
	must(cli.AddAddr("eth0", testbed.ClientV4+"/24"))
	must(cli.AddAddr("eth0", testbed.ClientV6+"/64"))
	must(router.AddAddr(testbed.RouterClientIf, testbed.RouterClientV4+"/24"))
	must(router.AddAddr(testbed.RouterClientIf, testbed.RouterClientV6+"/64"))
	must(router.AddAddr(testbed.RouterServerIf, testbed.RouterServerV4+"/24"))
	must(router.AddAddr(testbed.RouterServerIf, testbed.RouterServerV6+"/64"))
	must(srv.AddAddr("eth0", testbed.ServerV4+"/24"))
	must(srv.AddAddr("eth0", testbed.ServerV6+"/64"))
	must(cli.DefaultRoute(testbed.RouterClientV4))
	must(cli.DefaultRoute(testbed.RouterClientV6))
	must(srv.DefaultRoute(testbed.RouterServerV4))
	must(srv.DefaultRoute(testbed.RouterServerV6))
	must(router.Sysctl("net.ipv4.ip_forward", "1"))
	must(router.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	b := &bed{Topology: &testbed.Topology{Client: cli, Router: router, Server: srv}, t: t, suite: cfg}
	t.Cleanup(func() { b.pepsal("detach") }) // runs before the namespaces go
	return b
}

// deadNamespaceReused attaches pepsal in a namespace, deletes the namespace
// without detaching, and returns a new namespace with the same inode number,
// the pin directory it finds and the id of the dead namespace's sock_ops
// program.
//
// How the reuse is reproduced: namespace inode numbers come from an allocator
// that hands out the lowest free number, so once the dead namespace is torn
// down (its sk_lookup link then reports netns inode 0), the next namespaces
// created on the host get its number back. We create namespaces until one
// does. Another process creating a namespace (or any proc inode) at the same
// moment can take it first; then, and only then, the test fakes the reuse by
// renaming the dead pin directory to the new namespace's inode name, which is
// exactly what pepsal would find after a reuse. The log says which happened.
func deadNamespaceReused(t *testing.T) (router *testbed.NS, deadDir string, tuneID uint32) {
	t.Helper()
	// Made with ip(8), never entered by this process: a thread of it left in
	// the namespace (Go wedges the main thread rather than ending it) would
	// keep the namespace alive.
	dead := &testbed.NS{Name: fmt.Sprintf("pit-dead-%d", os.Getpid())}
	for _, args := range [][]string{
		{"netns", "add", dead.Name},
		{"-n", dead.Name, "link", "set", "lo", "up"},
		// An ifindex the new bed does not use, as in the field (the dead
		// interface index must not shadow a live one).
		{"-n", dead.Name, "link", "add", "dead0", "index", "77", "type", "veth", "peer", "name", "dead1"},
		{"-n", dead.Name, "link", "set", "dead0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	t.Cleanup(func() { dead.Close() })
	if r := runCmdIn(dead, pepsalBin, "attach", "--iface", "dead0"); r.code != 0 {
		t.Fatalf("attach in the doomed namespace: %s", r.stderr)
	}
	deadSt := statusIn(t, dead)
	deadIno := nsInode(t, dead)
	deadDir = pinDirFor(deadIno)
	tuneID = deadSt.Programs["pepsal_tune"]
	if deadSt.PinDir != deadDir || tuneID == 0 {
		t.Fatalf("doomed namespace: pin dir %q (want %q), sock_ops id %d", deadSt.PinDir, deadDir, tuneID)
	}
	orig := deadDir
	t.Cleanup(func() { removeDeadPins(t, orig) })
	if err := dead.Close(); err != nil { // no detach: the namespace just dies
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ino, err := steerNetns(deadDir)
		if err != nil {
			t.Fatalf("dead namespace's sk_lookup link: %v", err)
		}
		if ino == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace inode %d still alive 20 s after deletion", deadIno)
		}
		time.Sleep(50 * time.Millisecond)
	}

	for i := 0; i < 64 && router == nil; i++ {
		ns := newNS(t, "pit-rtr")
		if nsInode(t, ns) == deadIno {
			router = ns
			t.Logf("namespace %s got the dead namespace's inode %d after %d tries", ns.Name, deadIno, i+1)
		}
	}
	if router == nil {
		router = newNS(t, "pit-rtr")
		fake := pinDirFor(nsInode(t, router))
		if err := os.Rename(deadDir, fake); err != nil {
			t.Fatalf("fake the reuse: %v", err)
		}
		t.Cleanup(func() { removeDeadPins(t, fake) })
		t.Logf("inode %d was not handed out again (taken by another process); faked the reuse by renaming %s to %s", deadIno, deadDir, fake)
		deadDir = fake
	}
	return router, deadDir, tuneID
}

// TestDeadNamespacePinsNotAdopted: the pins of a namespace deleted without
// detach, found by a new namespace that got its inode number, are removed,
// not adopted (issue #10, 1).
func TestDeadNamespacePinsNotAdopted(t *testing.T) {
	router, deadDir, tuneID := deadNamespaceReused(t)
	b := bedAround(t, defaultSuite(), router)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}

	// status says the pins are a dead namespace's, and why; nothing is attached here.
	st, r := statusExit(t, router)
	if r.code == 0 || st.Attached || len(st.Problems) == 0 || !strings.Contains(st.Problems[0], "dead network namespace") {
		t.Errorf("status over a dead namespace's pins: exit %d, attached %v, problems %q", r.code, st.Attached, st.Problems)
	}
	oneLineError(t, r, "dead network namespace")
	// A daemon without --iface has nothing to serve on.
	r, timedOut := runBounded(router, 10*time.Second, "run", "--log-level", "error")
	if timedOut {
		t.Errorf("run without --iface served on a dead namespace's pins")
	} else {
		oneLineError(t, r, "nothing is attached")
	}
	if !exists(deadDir) {
		t.Fatalf("status or a refused run removed %s", deadDir)
	}

	d := b.startPepsal("--iface", testbed.RouterClientIf)
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.routerServer {
			t.Errorf("%s: server saw %s, want the router (split)", f.name, got)
		}
	}
	st, r = statusExit(t, router)
	if r.code != 0 || st.counter("steer_assigned") < 2 || len(st.Problems) > 0 {
		t.Errorf("status while serving: exit %d, steer_assigned %d, problems %q", r.code, st.counter("steer_assigned"), st.Problems)
	}
	if ino, err := steerNetns(deadDir); err != nil || uint64(ino) != nsInode(t, router) {
		t.Errorf("sk_lookup link on netns inode %d (%v), want this namespace's %d", ino, err, nsInode(t, router))
	}
	if programExists(tuneID) {
		t.Errorf("the dead namespace's sock_ops program (id %d) is still loaded (on the root cgroup)", tuneID)
	}
	if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if p := pins(t, router); p != "" {
		t.Errorf("pins left after SIGTERM:\n%s", p)
	}
}

// TestStatusFailsWhenIncoherent: with a daemon serving, status exits
// non-zero and says why when the attachment no longer does what it records
// (issue #10, 1).
func TestStatusFailsWhenIncoherent(t *testing.T) {
	cases := []struct {
		name    string
		breakIt func(t *testing.T, b *bed)
		want    string
	}{
		{"interface gone", func(t *testing.T, b *bed) {
			if err := b.Router.Do(func() error {
				l, err := netlink.LinkByName("pit-x0")
				if err != nil {
					return err
				}
				return netlink.LinkDel(l)
			}); err != nil {
				t.Fatal(err)
			}
		}, "no longer exists"},
		{"sk_lookup link detached", func(t *testing.T, b *bed) {
			l, err := link.LoadPinnedLink(filepath.Join(pinDirFor(nsInode(t, b.Router)), "link_steer_netns"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if err := l.Detach(); err != nil {
				t.Fatal(err)
			}
		}, "sk_lookup link"},
		{"fwmark rule deleted", func(t *testing.T, b *bed) {
			if out, err := b.Router.Command("ip", "-6", "rule", "del", "priority", "5091").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}, "policy routing incomplete"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBed(t, defaultSuite())
			veth(t, b.Router, "pit-x0", "pit-x1", 0)
			b.startPepsal("--iface", testbed.RouterClientIf, "--iface", "pit-x0")
			c.breakIt(t, b)
			st, r := statusExit(t, b.Router)
			if st.Serving || len(st.Problems) == 0 {
				t.Errorf("status --json: serving %v, problems %q", st.Serving, st.Problems)
			}
			oneLineError(t, r, c.want)
			text := b.pepsal("status")
			if text.code == 0 || !strings.Contains(text.stdout, "problem:   ") {
				t.Errorf("status: exit %d, no problem line:\n%s", text.code, text.stdout)
			}
		})
	}
	// A persistent attachment follows no interface (a daemon given --iface
	// does, and prunes a gone one itself): status says so, and attaching
	// again prunes it.
	t.Run("attach prunes a gone interface", func(t *testing.T) {
		b := newBed(t, defaultSuite())
		veth(t, b.Router, "pit-x0", "pit-x1", 0)
		if r := b.pepsal("attach", "--iface", testbed.RouterClientIf, "--iface", "pit-x0"); r.code != 0 {
			t.Fatalf("attach: %s", r.stderr)
		}
		t.Cleanup(func() { b.pepsal("detach") })
		startPepsalIn(t, b.suite, b.Router, "--listen-port", "5000")
		cases[0].breakIt(t, b)
		if st, r := statusExit(t, b.Router); r.code == 0 || !strings.Contains(strings.Join(st.Problems, "\n"), "persistent attachment") {
			t.Errorf("status with a persistent attachment's interface gone: exit %d, problems %q", r.code, st.Problems)
		}
		if r := b.pepsal("attach", "--iface", testbed.RouterClientIf); r.code != 0 {
			t.Fatalf("attach: %s", r.stderr)
		}
		if st, r := statusExit(t, b.Router); r.code != 0 || len(st.Ifaces) != 1 {
			t.Errorf("after attach: exit %d, ifaces %+v, problems %q", r.code, st.Ifaces, st.Problems)
		}
	})
}

// TestAttachErrorPathsNoPanic: every Attach failure we can provoke gives one
// line, a non-zero exit (not a panic's), and leaves the state as it was
// before the failed command (issue #10, 2).
func TestAttachErrorPathsNoPanic(t *testing.T) {
	iface, other := testbed.RouterClientIf, testbed.RouterServerIf
	lo := func(b *bed, up string) {
		if out, err := b.Router.Command("ip", "link", "set", "lo", up).CombinedOutput(); err != nil {
			t.Fatalf("lo %s: %v %s", up, err, out)
		}
	}
	// A u32 filter at pepsal's clsact priority with another protocol makes
	// the kernel refuse pepsal's filter on that interface.
	conflict := func(b *bed, dev string) {
		for _, args := range [][]string{
			{"tc", "qdisc", "add", "dev", dev, "clsact"},
			{"tc", "filter", "add", "dev", dev, "ingress", "pref", "1513", "protocol", "ip", "u32", "match", "u32", "0", "0", "classid", "1:1"},
		} {
			if out, err := b.Router.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v %s", args, err, out)
			}
		}
	}
	attach := func(b *bed, args ...string) {
		if r := b.pepsal(append([]string{"attach"}, args...)...); r.code != 0 {
			t.Fatalf("attach %v: %s", args, r.stderr)
		}
	}
	cases := []struct {
		name  string
		pre   func(b *bed)
		args  []string
		want  string
		post  func(b *bed)
		check func(t *testing.T, b *bed)
	}{
		{name: "second attach with another fwmark", pre: func(b *bed) { attach(b, "--iface", iface) },
			args: []string{"attach", "--iface", iface, "--fwmark", "0x77"}, want: "already attached with fwmark"},
		{name: "second attach with another table", pre: func(b *bed) { attach(b, "--iface", iface) },
			args: []string{"attach", "--iface", iface, "--iface", other, "--route-table", "77"}, want: "already attached with fwmark"},
		{name: "run with another fwmark", pre: func(b *bed) { attach(b, "--iface", iface) },
			args: []string{"run", "--iface", iface, "--fwmark", "0x77"}, want: "already attached with fwmark"},
		{name: "loopback down, fresh", pre: func(b *bed) { lo(b, "down") }, post: func(b *bed) { lo(b, "up") },
			args: []string{"attach", "--iface", iface}, want: "local default route"},
		{name: "loopback down, attached", pre: func(b *bed) { attach(b, "--iface", iface); lo(b, "down") }, post: func(b *bed) { lo(b, "up") },
			args: []string{"attach", "--iface", iface, "--iface", other}, want: "local default route"},
		{name: "run, loopback down", pre: func(b *bed) { lo(b, "down") }, post: func(b *bed) { lo(b, "up") },
			args: []string{"run", "--iface", iface}, want: "local default route"},
		{name: "tc refused, fresh", pre: func(b *bed) { conflict(b, other) },
			args: []string{"attach", "--tc-mode", "clsact", "--iface", iface, "--iface", other}, want: "attach classifier to " + other},
		{name: "tc refused, attached", pre: func(b *bed) { attach(b, "--tc-mode", "clsact", "--iface", iface); conflict(b, other) },
			args: []string{"attach", "--tc-mode", "clsact", "--iface", iface, "--iface", other}, want: "attach classifier to " + other},
		{name: "tc refused after a promotion", pre: func(b *bed) {
			veth(t, b.Router, "pit-x0", "pit-x1", 0)
			attach(b, "--tc-mode", "clsact", "--iface", other, "--return-iface", iface)
			conflict(b, "pit-x0")
		}, args: []string{"attach", "--tc-mode", "clsact", "--iface", iface, "--iface", "pit-x0"}, want: "attach classifier to pit-x0",
			check: func(t *testing.T, b *bed) {
				st := statusIn(t, b.Router)
				for _, i := range st.Ifaces {
					if i.Name == iface && !i.ReturnOnly {
						t.Errorf("%s promoted to full interception by a failed attach", iface)
					}
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBed(t, defaultSuite())
			if c.pre != nil {
				c.pre(b)
			}
			if c.post != nil {
				defer c.post(b)
			}
			before := netState(t, b.Router)
			args := c.args
			if args[0] == "run" {
				args = append([]string{"run", "--log-level", "error"}, args[1:]...)
			}
			r, timedOut := runBounded(b.Router, 15*time.Second, args...)
			if timedOut {
				t.Fatalf("%v did not fail: it was still running after 15 s", c.args)
			}
			oneLineError(t, r, c.want)
			if after := netState(t, b.Router); after != before {
				t.Errorf("the failed command changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if c.check != nil {
				c.check(t, b)
			}
		})
	}
}

// TestRestartedDaemonOwnsAttachment: `run --iface` after a daemon was killed
// adopts the attachment it left and removes it on SIGTERM; an attachment
// made or claimed by `pepsal attach`, or served by another daemon, is never
// taken (issue #10, 3).
func TestRestartedDaemonOwnsAttachment(t *testing.T) {
	t.Run("adopts a killed daemon's attachment", func(t *testing.T) {
		b := newBed(t, defaultSuite())
		before := netState(t, b.Router)
		peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
		b.startPepsal().Stop(syscall.SIGKILL, 5*time.Second)
		d := b.startPepsal()
		if got := peerSeen(t, b.Client, hostPort(testbed.ServerV4, 8080)); got != testbed.RouterServerV4 {
			t.Errorf("restarted daemon: server saw %s, want the router", got)
		}
		if st := statusIn(t, b.Router); st.OwnerPID != d.PID() {
			t.Errorf("owner pid %d, want the restarted daemon's %d", st.OwnerPID, d.PID())
		}
		if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if after := netState(t, b.Router); after != before {
			t.Errorf("the restarted daemon left traces:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
	// attachSurvivesRun: after `pepsal attach` the attachment is persistent,
	// and a `run --iface` that starts and stops leaves it exactly as it was.
	attachSurvivesRun := func(t *testing.T, b *bed, what string) {
		t.Helper()
		if r := b.pepsal("attach", "--iface", testbed.RouterClientIf); r.code != 0 {
			t.Fatal(r.stderr)
		}
		once := netState(t, b.Router)
		if err := b.startPepsal().Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if after := netState(t, b.Router); after != once {
			t.Errorf("run --iface removed %s:\nbefore:\n%s\nafter:\n%s", what, once, after)
		}
	}
	t.Run("persistent attach survives run --iface", func(t *testing.T) {
		attachSurvivesRun(t, newBed(t, defaultSuite()), "a persistent attachment")
	})
	t.Run("attach claims a killed daemon's attachment", func(t *testing.T) {
		b := newBed(t, defaultSuite())
		b.startPepsal().Stop(syscall.SIGKILL, 5*time.Second)
		attachSurvivesRun(t, b, "an attachment `pepsal attach` claimed")
	})
	t.Run("not while another daemon serves it", func(t *testing.T) {
		b := newBed(t, defaultSuite())
		b.startPepsal().Stop(syscall.SIGKILL, 5*time.Second)
		startPepsalIn(t, b.suite, b.Router) // serves on it without owning it
		r, timedOut := runBounded(b.Router, 15*time.Second, "run", "--log-level", "error", "--listen-port", "5001", "--iface", testbed.RouterClientIf)
		if timedOut {
			t.Fatal("a second daemon served the same attachment")
		}
		oneLineError(t, r, "another pepsal daemon is serving")
		if r := b.pepsal("status"); r.code != 0 {
			t.Errorf("the refused daemon broke the serving one:\n%s%s", r.stdout, r.stderr)
		}
	})
}

// TestDetachRemovesDeadNamespacePins: `pepsal detach` in a namespace that
// found a dead namespace's pins removes them and the dead namespace's sock_ops
// program, and changes nothing of this namespace.
func TestDetachRemovesDeadNamespacePins(t *testing.T) {
	router, deadDir, tuneID := deadNamespaceReused(t)
	b := bedAround(t, defaultSuite(), router)
	withoutPins := func(s string) string { return s[:strings.LastIndex(s, "\npins:\n")] }
	before := withoutPins(netState(t, b.Router))
	if r := b.pepsal("detach"); r.code != 0 {
		t.Fatalf("detach: exit %d %s", r.code, r.stderr)
	}
	if exists(deadDir) {
		t.Errorf("%s survives detach", deadDir)
	}
	if programExists(tuneID) {
		t.Errorf("the dead namespace's sock_ops program (id %d) survives detach", tuneID)
	}
	if after := withoutPins(netState(t, b.Router)); after != before {
		t.Errorf("detach of a dead namespace's pins changed this namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestSweepStaleBeds: what a test run killed before its clean-up leaves (a
// namespace with a process and a pepsal attachment in it, whose sock_ops
// program runs for every socket of the host) is removed by the next run's
// sweep; the namespaces of a live run are not touched.
func TestSweepStaleBeds(t *testing.T) {
	live := newNS(t, "sweep-live")
	doomed := newNS(t, "sweep-dead")
	veth(t, doomed, "sw0", "sw1", 0)
	if r := runCmdIn(doomed, pepsalBin, "attach", "--iface", "sw0"); r.code != 0 {
		t.Fatalf("attach: %s", r.stderr)
	}
	dir := pinDirFor(nsInode(t, doomed))
	t.Cleanup(func() { removeDeadPins(t, dir) })
	tuneID := statusIn(t, doomed).Programs["pepsal_tune"]
	if tuneID == 0 || !exists(dir) {
		t.Fatalf("attachment: sock_ops id %d, pin dir %s exists: %v", tuneID, dir, exists(dir))
	}
	sleeper := doomed.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	t.Cleanup(func() { sleeper.Process.Kill() })
	// nsenter enters the namespace after the fork: until then the sweep
	// cannot see the process as one of the bed's.
	ino := nsInode(t, doomed)
	waitFor(t, 10*time.Second, "the process in the namespace", func() bool {
		var st syscall.Stat_t
		return syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid), &st) == nil && st.Ino == ino
	})

	// The run that made doomed is gone: its owner is a process that ended.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(testbed.OwnersDir, doomed.Name)
	if err := os.WriteFile(marker, fmt.Appendf(nil, "%d 1\n", gone.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}

	removed, err := testbed.SweepStale()
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if !slices.Contains(removed, doomed.Name) || slices.Contains(removed, live.Name) {
		t.Errorf("swept %v: want %s and not %s", removed, doomed.Name, live.Name)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("the process in the stale namespace survived the sweep")
	}
	for _, p := range []string{doomed.Path(), dir, marker} {
		if exists(p) {
			t.Errorf("%s survives the sweep", p)
		}
	}
	for end := time.Now().Add(10 * time.Second); programExists(tuneID); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Errorf("the stale attachment's sock_ops program (id %d) survives the sweep", tuneID)
			break
		}
	}
	if !exists(live.Path()) || !exists(filepath.Join(testbed.OwnersDir, live.Name)) {
		t.Errorf("the sweep touched %s, whose run is alive", live.Name)
	}
}
