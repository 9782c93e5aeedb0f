// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// needRoot lets `make unit` (-short, not root) skip the tests that make
// namespaces or load BPF; anywhere else not being root is a failure.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() {
		t.Skip("needs root (network namespaces, BPF): runs in make test")
	}
	t.Fatal("needs root (network namespaces, BPF); without it run make unit")
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestEnterAndLeave: Enter moves the calling thread into the namespace and
// leave brings it back; EnterForTest does the same for the rest of a test.
func TestEnterAndLeave(t *testing.T) {
	needRoot(t)
	ns := NewTestNS(t, "tb-enter")
	home, there := inode(t, "/proc/thread-self/ns/net"), inode(t, ns.Path())
	leave, err := ns.Enter()
	if err != nil {
		t.Fatal(err)
	}
	if got := inode(t, "/proc/thread-self/ns/net"); got != there {
		leave()
		t.Fatalf("after Enter the thread is in netns %d, want %s's %d", got, ns.Name, there)
	}
	leave()
	if got := inode(t, "/proc/thread-self/ns/net"); got != home {
		t.Fatalf("after leave the thread is in netns %d, want %d where it was", got, home)
	}
	t.Run("for_test", func(t *testing.T) {
		ns.EnterForTest(t)
		if got := inode(t, "/proc/thread-self/ns/net"); got != there {
			t.Errorf("the test runs in netns %d, want %s's %d", got, ns.Name, there)
		}
	})
}

// TestNewTestNSCleansUp: the namespace of a test, and its owner record, go
// when the test ends.
func TestNewTestNSCleansUp(t *testing.T) {
	needRoot(t)
	var ns *NS
	t.Run("bed", func(t *testing.T) {
		ns = NewTestNS(t, "tb-clean")
		if !exists(ns.Path()) || !exists(filepath.Join(OwnersDir, ns.Name)) {
			t.Fatalf("%s or its owner record is missing", ns.Path())
		}
	})
	if ns == nil {
		t.Fatal("no namespace made")
	}
	for _, p := range []string{ns.Path(), filepath.Join(OwnersDir, ns.Name)} {
		if exists(p) {
			t.Errorf("%s survives its test", p)
		}
	}
}

// TestRemovePepsalPins: the sweep detaches a dead namespace's cgroup links
// (the sock_ops program that would otherwise run for every socket of the
// host) and removes its pin directories, its own and an attach's temporary
// one, and nothing of another namespace.
func TestRemovePepsalPins(t *testing.T) {
	needRoot(t)
	cg := testCgroup(t)
	ino := uint64(1)<<62 | uint64(os.Getpid()) // no real namespace has it
	dirs := PinDirGlobs(ino)
	dead, tmp, other := dirs[0], dirs[0]+tmpPinSuffix+"4242", PinDirGlobs(ino + 1)[0]
	t.Cleanup(func() {
		for _, d := range []string{dead, tmp, other} {
			os.RemoveAll(d)
		}
		_ = os.Remove(pepsalPins)
	})
	for _, d := range []string{dead, tmp, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SockOps,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	for _, d := range []string{dead, other} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupSockOps, Program: prog})
		if err != nil {
			t.Fatal(err)
		}
		err = l.Pin(filepath.Join(d, "link_tune_cgroup"))
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		// A program pinned beside it, which is no link: left to RemoveAll.
		c, err := prog.Clone()
		if err != nil {
			t.Fatal(err)
		}
		err = c.Pin(filepath.Join(d, "prog"))
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := attached(t, cg); n != 2 {
		t.Fatalf("%d programs on the cgroup, want 2", n)
	}

	if err := removePepsalPins(ino); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dead, tmp} {
		if exists(d) {
			t.Errorf("%s survives", d)
		}
	}
	if !exists(filepath.Join(other, "link_tune_cgroup")) {
		t.Errorf("another namespace's pins went too")
	}
	if n := attached(t, cg); n != 1 {
		t.Errorf("%d programs on the cgroup, want the other namespace's only", n)
	}
}

// testCgroup makes a cgroup v2 of the test's own, removed at its end.
func testCgroup(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var root string
	for sc := bufio.NewScanner(f); sc.Scan() && root == ""; {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				root = fields[4]
			}
		}
	}
	if root == "" {
		t.Skip("no cgroup v2 hierarchy is mounted")
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	cg := filepath.Join(root, "pepsal-testbed-"+hex.EncodeToString(suffix))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return cg
}

// attached counts the sock_ops programs attached to cgroup cg.
func attached(t *testing.T, cg string) int {
	t.Helper()
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		t.Fatal(fmt.Errorf("query %s: %w", cg, err))
	}
	return len(res.Programs)
}
