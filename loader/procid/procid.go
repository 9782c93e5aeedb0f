// SPDX-License-Identifier: Apache-2.0

// Package procid tells processes apart and keeps them from interleaving: a
// process's identity (its pid and its start time, which no later process
// with the same pid shares) and an exclusive lock on a directory.
//
// It owns only that: it reads /proc/PID/stat and flocks the directory it is
// given (making it if need be). It must not touch BPF objects, pins,
// namespaces, interfaces or anything else of the host, and must import
// nothing of pepsal's: the loader and the test beds both import it, and the
// loader's tests import the test beds.
package procid

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ID is one process, told apart from a later one with the same pid by its
// start time. The zero ID is no process.
type ID struct {
	PID   int
	Start uint64 // clock ticks after boot, /proc/PID/stat field 22
}

// Self is this process.
func Self() (ID, error) { return Of(os.Getpid()) }

// Of is the process that runs as pid now.
func Of(pid int) (ID, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ID{}, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	start, err := parseStartTime(string(b))
	if err != nil {
		return ID{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return ID{PID: pid, Start: start}, nil
}

// parseStartTime takes field 22 of a /proc/PID/stat line. The command name
// (field 2) may hold spaces and parentheses: fields are counted after its
// last closing parenthesis, from field 3 on.
func parseStartTime(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	fields := strings.Fields(stat[i+1:])
	if len(fields) < 20 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 20", len(fields))
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// Alive says whether the process still runs: its pid exists and started
// when id says (otherwise the pid went to another process).
func (id ID) Alive() bool {
	if id.PID <= 0 {
		return false
	}
	now, err := Of(id.PID)
	return err == nil && now == id
}

// String is "<pid> <start time>", which Parse reads back.
func (id ID) String() string { return fmt.Sprintf("%d %d", id.PID, id.Start) }

// Parse reads what String wrote (surrounding white space allowed).
func Parse(s string) (ID, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return ID{}, fmt.Errorf("process id %q: want \"<pid> <start time>\"", s)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return ID{}, fmt.Errorf("process id %q: pid: %w", s, err)
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return ID{}, fmt.Errorf("process id %q: start time: %w", s, err)
	}
	return ID{PID: pid, Start: start}, nil
}

// Lock takes an exclusive flock on dir, made (mode 0700) when missing, and
// returns the function that releases it. It waits while another process (or
// another Lock of this one) holds it; the kernel releases the lock of a
// process that dies, so a killed holder never blocks the next.
func Lock(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}
