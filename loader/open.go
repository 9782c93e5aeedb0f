// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// openPinned opens the maps of the attachment pinned in dir, as a restarted
// or upgraded daemon and the CLI do: the same pins the objects were loaded
// with, checked against this binary's objects.
func openPinned(dir string) (*Attachment, error) {
	if err := checkLayout(dir); err != nil {
		return nil, err
	}
	conns, err := connCapacity(dir)
	if err != nil {
		return nil, err
	}
	att := &Attachment{Dir: dir}
	if err := openMaps(dir, loadClassify, conns, &att.maps); err != nil {
		att.Close()
		return nil, err
	}
	if err := openMaps(dir, loadRelay, conns, &att.relay); err != nil {
		att.Close()
		return nil, err
	}
	return att, nil
}

// openMaps assigns the pinned maps of one object to maps (a bpf2go maps
// struct) by loading its map specs with dir as PinPath, as createPinned did:
// each comes from its pin. A missing pin is ErrNotAttached; it is never
// created here, as loading would.
func openMaps(dir string, load func() (*ebpf.CollectionSpec, error), conns int, maps any) error {
	spec, err := load()
	if err != nil {
		return err
	}
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName && !exists(filepath.Join(dir, name)) {
			return ErrNotAttached
		}
	}
	sizeConnMaps(spec, conns)
	if err := spec.LoadAndAssign(maps, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("the pins in this namespace do not match this binary's maps (run `pepsal detach`, then attach again): %w", err)
		}
		return fmt.Errorf("open pinned maps: %w", err)
	}
	return nil
}

// Open opens the existing attachment of this network namespace. Pins of a
// dead namespace found in its pin directory give a *ForeignPinsError, which
// is also ErrNotAttached.
func Open() (*Attachment, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil, ErrNotAttached
	}
	dir, err := PinDir()
	if err != nil {
		return nil, err
	}
	if err := foreignPins(dir); err != nil {
		return nil, err
	}
	return openPinned(dir)
}
