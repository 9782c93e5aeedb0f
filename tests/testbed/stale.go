// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/pepsal/pepsal/loader/procid"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// OwnersDir holds one file per namespace made by NewNS, named after it,
// that names the process that made it (a procid.ID, "<pid> <start time>"):
// a test binary or bench killed before its clean-up (a test timeout,
// SIGKILL) leaves namespaces, their processes and pepsal's pins behind, and
// SweepStale finds them by their dead owner.
const OwnersDir = "/run/pepsal-testbed"

// recordOwner marks ns as this process's.
func recordOwner(name string) error {
	me, err := procid.Self()
	if err != nil {
		return fmt.Errorf("owner of %s: %w", name, err)
	}
	if err := os.MkdirAll(OwnersDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(OwnersDir, name), []byte(me.String()+"\n"), 0o644)
}

func forgetOwner(name string) {
	_ = os.Remove(filepath.Join(OwnersDir, name))
}

// SweepStale removes what test beds of dead processes left: every process
// in their namespaces, the pepsal pins of those namespaces (a pinned
// sock_ops link stays on the root cgroup, and so runs for every socket of
// the host, until its pin goes), and the namespaces. Beds of live
// processes, and namespaces NewNS did not make, are left alone. It returns
// the names of the namespaces removed.
func SweepStale() ([]string, error) {
	entries, err := os.ReadDir(OwnersDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		b, err := os.ReadFile(filepath.Join(OwnersDir, name))
		if err != nil {
			continue // removed meanwhile by its owner
		}
		if o, err := procid.Parse(string(b)); err != nil || o.Alive() {
			continue
		}
		if err := removeStale(name); err != nil {
			errs = append(errs, err)
			continue
		}
		forgetOwner(name)
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

func removeStale(name string) error {
	path := filepath.Join("/run/netns", name)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stale test bed %s: %w", name, err)
	}
	killAllIn(st.Dev, st.Ino)
	if err := removePepsalPins(st.Ino); err != nil {
		return fmt.Errorf("stale test bed %s: remove pins: %w", name, err)
	}
	if err := removeControlDir(st.Ino); err != nil {
		return fmt.Errorf("stale test bed %s: %w", name, err)
	}
	if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("stale test bed %s: delete: %w", name, err)
	}
	return nil
}

// killAllIn kills every process whose network namespace is dev/ino.
func killAllIn(dev, ino uint64) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(p+"/ns/net", &st) != nil || st.Dev != dev || st.Ino != ino {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// pepsalPins holds pepsal's pin directories in bpffs, one per namespace
// (the loader's PinDirOf); tmpPinSuffix and its pid name the directory an
// attach fills before renaming it into place. The
// test beds cannot import the loader (its tests import them); the loader's
// TestTestbedFindsThePins keeps these in step with it.
const (
	pepsalPins   = "/sys/fs/bpf/pepsal"
	tmpPinSuffix = "_tmp_"
)

// ControlRoot holds the daemons' control sockets, one directory per
// namespace (report.ControlRoot; its tests keep the two in step). A daemon
// killed by a test leaves its directory behind.
const ControlRoot = "/run/pepsal"

// removeControlDir removes the control socket directory of the namespace
// whose inode is ino, which is about to go.
func removeControlDir(ino uint64) error {
	dir := filepath.Join(ControlRoot, fmt.Sprintf("netns-%d", ino))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// PinDirGlobs are the patterns of the pepsal pin directories of the
// namespace whose inode is ino: its own, and those of attaches killed midway.
func PinDirGlobs(ino uint64) []string {
	dir := filepath.Join(pepsalPins, fmt.Sprintf("netns-%d", ino))
	return []string{dir, dir + tmpPinSuffix + "*"}
}

// removePepsalPins removes the pepsal pins of the namespace whose inode is
// ino, which is about to go, from outside it. What outlives a namespace is
// what is attached to a cgroup (the sock_ops program, on the host's root
// cgroup, which every namespace shares): those links are detached first.
// Dropping the last reference to the rest (the namespace's tc and sk_lookup
// links, programs, maps) frees it.
func removePepsalPins(ino uint64) error {
	var errs []error
	for _, g := range PinDirGlobs(ino) {
		dirs, _ := filepath.Glob(g)
		for _, dir := range dirs {
			errs = append(errs, detachCgroupLinks(dir))
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
			}
		}
	}
	_ = os.Remove(pepsalPins) // fails while other namespaces have pins
	return errors.Join(errs...)
}

// detachCgroupLinks detaches every cgroup link pinned in dir.
func detachCgroupLinks(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue // a map or a program
		}
		pin := filepath.Join(dir, e.Name())
		info, err := l.Info()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("link info of %s: %w", pin, err))
		case info.Type == link.CgroupType:
			if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
			}
		}
		l.Close()
	}
	return errors.Join(errs...)
}
