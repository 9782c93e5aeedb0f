// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func (a *Attachment) detachIface(ifindex int) error {
	var st classifyIfaceState
	_ = a.maps.PepsalIfaces.Lookup(uint32(ifindex), &st)
	err := detachTC(a.Dir, ifindex, st)
	_ = a.maps.PepsalIfaces.Delete(uint32(ifindex))
	return err
}

// Detach removes every trace of pepsal from this network namespace: tc
// programs and the qdiscs it created, sk_lookup, rules, routes and pins. It
// works after a killed daemon and is a no-op when nothing is attached.
func Detach() error {
	var fs unix.Statfs_t
	if err := unix.Statfs(BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir, err := PinDir()
	if err != nil {
		return err
	}
	var foreign *ForeignPinsError
	if err := foreignPins(dir); errors.As(err, &foreign) {
		return removeForeignPins(dir) // nothing of it is in this namespace
	} else if err != nil {
		return err
	}
	return detachLocked(dir)
}

// DetachOwned detaches like Detach if this process owns the attachment (it
// created it, or adopted a dead daemon's, with Config.Daemon), and tells
// whether it did. An attachment `pepsal attach` made or claimed since stays.
func DetachOwned() (bool, error) {
	unlock, err := lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	dir, err := PinDir()
	if err != nil {
		return false, err
	}
	var foreign *ForeignPinsError
	if err := foreignPins(dir); errors.As(err, &foreign) {
		return false, nil // not this namespace's, so not ours
	} else if err != nil {
		return false, err
	}
	cur, err := readOwner(dir)
	if err != nil {
		return false, err
	}
	me, err := self()
	if err != nil {
		return false, err
	}
	if cur != me {
		return false, nil
	}
	return true, detachLocked(dir)
}

// OwnedByMe says whether this process removes the attachment when it stops.
func (a *Attachment) OwnedByMe() bool {
	cur, err := readOwner(a.Dir)
	if err != nil || cur.PID == 0 {
		return false
	}
	me, err := self()
	return err == nil && cur == me
}

// Owner is the pid of the daemon that removes the attachment when it stops
// and whether it still runs; 0 for a persistent attachment (`pepsal attach`).
func (a *Attachment) Owner() (pid int, alive bool) {
	cur, err := readOwner(a.Dir)
	if err != nil {
		return 0, false
	}
	return int(cur.PID), cur.alive()
}

func detachLocked(dir string) error {
	var errs []error
	routing := Routing{Mark: DefaultMark, Table: DefaultTable, Priority: DefaultRulePriority}
	var restoreFastOpen, restoreEarlyDemux, restoreTWReuse uint32
	if att, err := openPinned(dir); err == nil {
		if r, err := att.Routing(); err == nil {
			routing = r
		}
		if c, err := att.Config(); err == nil {
			restoreFastOpen, restoreEarlyDemux, restoreTWReuse = c.FastopenRestore, c.EarlyDemuxRestore, c.TwReuseRestore
		}
		for _, i := range att.recordedIfaces() {
			errs = append(errs, att.detachIface(i))
		}
		att.Close()
	} else { // pins of another layout
		if c, ok := rawConfig(dir); ok {
			routing = Routing{Mark: c.Mark, Table: int(c.RouteTable), Priority: int(c.RulePriority)}
			restoreFastOpen, restoreEarlyDemux, restoreTWReuse = c.FastopenRestore, c.EarlyDemuxRestore, c.TwReuseRestore
		}
		for i, st := range rawIfaces(dir) {
			errs = append(errs, detachTC(dir, i, st))
		}
	}
	// Links pinned without a record (a crash between pin and record).
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if rest, ok := strings.CutPrefix(e.Name(), tcLinkPrefix); ok {
			if i, err := strconv.Atoi(rest); err == nil {
				errs = append(errs, detachTC(dir, i, classifyIfaceState{TcMode: tcModeTCX}))
			}
		}
	}
	for _, pin := range []string{pinTuneLink, pinSteerLink} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, pin), nil)
		if err != nil {
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
		}
		l.Close()
	}
	errs = append(errs, routing.Remove())
	errs = append(errs, restoreSysctl(sysctlFastOpen, restoreFastOpen), restoreSysctl(sysctlEarlyDemux, restoreEarlyDemux),
		restoreSysctl(sysctlTWReuse, restoreTWReuse))
	errs = append(errs, removePinDir(dir))
	return errors.Join(errs...)
}
