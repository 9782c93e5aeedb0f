package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/pepsal/pepsal/loader"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// OwnersDir holds one file per namespace made by NewNS, named after it,
// that names the process that made it ("<pid> <start time>"): a test binary
// or bench killed before its clean-up (a test timeout, SIGKILL) leaves
// namespaces, their processes and pepsal's pins behind, and SweepStale
// finds them by their dead owner.
const OwnersDir = "/run/pepsal-testbed"

// owner is a process, told apart from a later one with the same pid by its
// start time.
type owner struct {
	pid   int
	start uint64
}

func self() (owner, error) {
	start, err := loader.ProcessStart(os.Getpid())
	return owner{pid: os.Getpid(), start: start}, err
}

func (o owner) alive() bool {
	start, err := loader.ProcessStart(o.pid)
	return err == nil && start == o.start
}

// recordOwner marks ns as this process's.
func recordOwner(name string) error {
	o, err := self()
	if err != nil {
		return fmt.Errorf("owner of %s: %w", name, err)
	}
	if err := os.MkdirAll(OwnersDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(OwnersDir, name), fmt.Appendf(nil, "%d %d\n", o.pid, o.start), 0o644)
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
		var o owner
		if _, err := fmt.Sscan(string(b), &o.pid, &o.start); err != nil || o.alive() {
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
	if err := loader.RemoveDeadNamespacePins(st.Ino); err != nil {
		return fmt.Errorf("stale test bed %s: remove pins: %w", name, err)
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
