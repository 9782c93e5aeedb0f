// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
)

// LayoutVersion numbers the layout of the pins: which maps there are, and
// their types, keys, values and (fixed sizes) entries. A binary opens only pins of its own layout
// (another layout would be misread, or refused by the kernel half way
// through an attach). TestLayoutFingerprint fails when the maps change:
// then bump LayoutVersion and record the new fingerprint.
const LayoutVersion = 9

// layoutFingerprint is the maps of LayoutVersion, as mapsFingerprint gives it.
const layoutFingerprint = "" +
	"pepsal_admit array key 4 value 8 entries 1;" +
	"pepsal_config array key 4 value 40 entries 1;" +
	"pepsal_counters per_cpu_array key 4 value 384 entries 1;" +
	"pepsal_diverted lru_hash key 40 value 16;" +
	"pepsal_exclude lpm_trie key 20 value 1 entries 4096;" +
	"pepsal_ifaces hash key 4 value 12 entries 256;" +
	"pepsal_iw_wait lru_hash key 8 value 1 entries 4096;" +
	"pepsal_layout array key 4 value 4 entries 1;" +
	"pepsal_listen sock_map key 4 value 8 entries 2;" +
	"pepsal_owner array key 4 value 16 entries 1;" +
	"pepsal_peerport array key 4 value 4 entries 1;" +
	"pepsal_ports hash key 2 value 1 entries 65536;" +
	"pepsal_relay sock_hash key 8 value 8;" +
	"pepsal_relaydir hash key 8 value 48;" +
	"pepsal_relayusr hash key 8 value 8;" +
	"pepsal_srcfull hash key 16 value 1 entries 65536;" +
	"pepsal_stalled lru_hash key 40 value 16 entries 16384;" +
	"pepsal_tfo_from lpm_trie key 20 value 1 entries 1024;" +
	"pepsal_tuning array key 4 value 40 entries 2;" +
	"pepsal_upstream hash key 8 value 1;"

const pinLayout = "pepsal_layout"

// LayoutError means the pins were made by a pepsal of another layout.
type LayoutError struct{ Found, Want uint32 }

func (e *LayoutError) Error() string {
	return fmt.Sprintf("the pins in this namespace were made by another pepsal version (layout %d, this binary %d): run `pepsal detach`, then attach again", e.Found, e.Want)
}

// mapsFingerprint lists every pinned map, from the compiled-in objects plus
// the ones Go creates, by name, type, key and value size, and the number of
// entries of those that do not follow --max-conns (objects share a pinned map
// only if that matches too).
func mapsFingerprint() (string, error) {
	seen := map[string]string{
		pinOwner:  pinOwner + " array key 4 value 16 entries 1",
		pinLayout: pinLayout + " array key 4 value 4 entries 1",
	}
	for _, load := range []func() (*ebpf.CollectionSpec, error){loadClassify, loadSteer, loadRelay, loadTune} {
		spec, err := load()
		if err != nil {
			return "", err
		}
		for name, m := range spec.Maps {
			if strings.HasPrefix(name, ".") {
				continue // .rodata and the like: not pinned
			}
			seen[name] = fmt.Sprintf("%s %s key %d value %d", name, typeName(m.Type), m.KeySize, m.ValueSize)
			if !isPerConn(name) {
				seen[name] += fmt.Sprintf(" entries %d", m.MaxEntries)
			}
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(seen[n] + ";")
	}
	return b.String(), nil
}

func typeName(t ebpf.MapType) string {
	var b strings.Builder
	for i, r := range t.String() { // PerCPUArray -> per_cpu_array
		if r >= 'A' && r <= 'Z' {
			if i > 0 && !(i+1 < len(t.String()) && t.String()[i-1] >= 'A' && t.String()[i-1] <= 'Z' && t.String()[i+1] >= 'A' && t.String()[i+1] <= 'Z') {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// pinLayoutVersion records this binary's layout among the pins in dir.
func pinLayoutVersion(dir string) error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: pinLayout, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Key: btfU32, Value: layoutBTF})
	if err != nil {
		return fmt.Errorf("create %s map: %w", pinLayout, err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint32(LayoutVersion)); err != nil {
		return fmt.Errorf("record layout: %w", err)
	}
	if err := m.Pin(filepath.Join(dir, pinLayout)); err != nil {
		return fmt.Errorf("pin %s: %w", pinLayout, err)
	}
	return nil
}

// checkLayout fails with a *LayoutError unless the pins in dir are of this
// binary's layout. Pins without a recorded layout predate the record: 1. No
// pins at all is not this function's business (the caller reports it).
func checkLayout(dir string) error {
	found := uint32(1)
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinLayout), nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if !exists(filepath.Join(dir, pinConfig)) {
			return nil
		}
	case err != nil:
		return fmt.Errorf("open pinned %s: %w", pinLayout, err)
	default:
		defer m.Close()
		if err := m.Lookup(uint32(0), &found); err != nil {
			return fmt.Errorf("read layout: %w", err)
		}
	}
	if found != LayoutVersion {
		return &LayoutError{Found: found, Want: LayoutVersion}
	}
	return nil
}

// rawConfig reads pepsal_config from pins that openPinned refuses (another
// layout), when its value still has this binary's size, so that detach can
// restore the routing and sysctls they record.
func rawConfig(dir string) (classifyConfig, bool) {
	var c classifyConfig
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinConfig), nil)
	if err != nil {
		return c, false
	}
	defer m.Close()
	if int(m.ValueSize()) != binary.Size(c) {
		return c, false
	}
	return c, m.Lookup(uint32(0), &c) == nil
}

// rawIfaces reads pepsal_ifaces from pins of another layout, when its entries
// still have this binary's sizes, so that detach can remove the classifier
// from interfaces where it is a clsact filter (a tcx link is pinned: removing
// the pin removes it; a filter is not).
func rawIfaces(dir string) map[int]classifyIfaceState {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, classifyMapPepsalIfaces), nil)
	if err != nil {
		return nil
	}
	defer m.Close()
	var st classifyIfaceState
	if m.KeySize() != 4 || int(m.ValueSize()) != binary.Size(st) {
		return nil
	}
	out := map[int]classifyIfaceState{}
	var idx uint32
	it := m.Iterate()
	for it.Next(&idx, &st) {
		out[int(idx)] = st
	}
	return out
}
