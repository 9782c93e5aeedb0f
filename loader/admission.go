// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Maps that hold entries per connection, and how many per connection: they
// are sized from the configured connection limit when the attachment is
// created, instead of a fixed 65,536 that capped every gateway.
var perConnMaps = []struct {
	name    string
	perConn uint32
}{
	{"pepsal_diverted", 2}, // LRU, from the SYN to the accept; 2: room for SYNs whose accept is late
	{"pepsal_relay", 2},    // both sockets (sockmap relay)
	{"pepsal_relaydir", 2}, // both directions
	{"pepsal_relayusr", 2},
	{"pepsal_upstream", 1}, // the server leg, for sock_ops
}

// minMapConns keeps maps usable for a tiny limit (a test's --max-conns 3).
const minMapConns = 512

// MaxMapConns bounds the connection capacity maps are sized for (a hash map
// entry costs ~100 bytes preallocated; 4M connections is 2.5 GB of maps).
const MaxMapConns = 4 << 20

// DefaultMapConns is the capacity of an attachment made without a limit.
const DefaultMapConns = 65536

// mapEntries is the size of a per-connection map for conns connections.
func mapEntries(conns int, perConn uint32) uint32 {
	conns = max(conns, minMapConns)
	return uint32(conns) * perConn
}

// isPerConn says whether a map is sized from the connection limit.
func isPerConn(name string) bool {
	for _, pm := range perConnMaps {
		if pm.name == name {
			return true
		}
	}
	return false
}

// sizeConnMaps sizes the per-connection maps an object declares for conns
// connections.
func sizeConnMaps(spec *ebpf.CollectionSpec, conns int) {
	for _, pm := range perConnMaps {
		if s, ok := spec.Maps[pm.name]; ok {
			s.MaxEntries = mapEntries(conns, pm.perConn)
		}
	}
}

// ConnCapacity is how many connections the pinned per-connection maps of
// dir hold (the smallest of them), 0 if none is pinned.
func connCapacity(dir string) (int, error) {
	capacity := 0
	for _, pm := range perConnMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pm.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("open pinned map %s: %w", pm.name, err)
		}
		n := int(m.MaxEntries() / pm.perConn)
		m.Close()
		if capacity == 0 || n < capacity {
			capacity = n
		}
	}
	return capacity, nil
}

// ConnCapacity is how many connections the attachment's maps hold.
func (a *Attachment) ConnCapacity() (int, error) { return connCapacity(a.Dir) }

// ExistingCapacity is the connection capacity of this namespace's
// attachment, and false when there is none (a new one is sized as asked).
func ExistingCapacity() (int, bool, error) {
	att, err := Open()
	if errors.Is(err, ErrNotAttached) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer att.Close()
	n, err := att.ConnCapacity()
	return n, err == nil, err
}

// SetFull tells the classifier whether the daemon takes new connections:
// full, new SYNs are forwarded unsplit (counted as syn_bypass_full). The
// rest of the admission state is left as it is.
func (a *Attachment) SetFull(full bool) error {
	return a.updateAdmission(func(v *classifyAdmission) { v.Full = b32(full) })
}

// Full reads the admission flag the classifier sees.
func (a *Attachment) Full() (bool, error) {
	var v classifyAdmission
	if err := a.maps.PepsalAdmit.Lookup(uint32(0), &v); err != nil {
		return false, fmt.Errorf("read pepsal_admit: %w", err)
	}
	return v.Full != 0, nil
}

// updateAdmission changes pepsal_admit under a lock: the daemon's
// admission and its fast-open setting write different fields of it.
func (a *Attachment) updateAdmission(change func(*classifyAdmission)) error {
	a.admMu.Lock()
	defer a.admMu.Unlock()
	var v classifyAdmission
	if err := a.maps.PepsalAdmit.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("read pepsal_admit: %w", err)
	}
	change(&v)
	if err := a.maps.PepsalAdmit.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write pepsal_admit: %w", err)
	}
	return nil
}

func b32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
