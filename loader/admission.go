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
	{"pepsal_diverted", 2},   // LRU, from the SYN to the accept; 2: room for SYNs whose accept is late
	{"pepsal_relay", 2},      // both sockets (sockmap relay)
	{"pepsal_relay_dirs", 2}, // both directions
	{"pepsal_relay_user", 2},
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

// createConnMaps creates the per-connection maps of the relay and sock_ops
// objects with sizes for conns connections and pins them in dir; the
// returned maps replace the objects' own at load (loadSharing). Maps the
// classifier already made (pepsal_diverted) are the classifier's.
func createConnMaps(dir string, conns int, classify map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	relaySpec, err := loadRelay()
	if err != nil {
		return nil, err
	}
	tuneSpec, err := loadTune()
	if err != nil {
		return nil, err
	}
	out := map[string]*ebpf.Map{}
	fail := func(err error) (map[string]*ebpf.Map, error) {
		for _, m := range out {
			m.Close()
		}
		return nil, err
	}
	for _, pm := range perConnMaps {
		if _, ok := classify[pm.name]; ok {
			continue // sized in the classifier's spec
		}
		var spec *ebpf.MapSpec
		for _, cs := range []*ebpf.CollectionSpec{relaySpec, tuneSpec} {
			if s, ok := cs.Maps[pm.name]; ok {
				spec = s.Copy()
			}
		}
		if spec == nil {
			return fail(fmt.Errorf("no map %s in the relay and sock_ops objects", pm.name))
		}
		spec.MaxEntries = mapEntries(conns, pm.perConn)
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return fail(fmt.Errorf("create map %s with %d entries: %w", pm.name, spec.MaxEntries, err))
		}
		out[pm.name] = m
		if err := m.Pin(filepath.Join(dir, pm.name)); err != nil {
			return fail(fmt.Errorf("pin map %s: %w", pm.name, err))
		}
	}
	return out, nil
}

// sizeClassifyMaps sizes the classifier's per-connection maps in its spec.
func sizeClassifyMaps(spec *ebpf.CollectionSpec, conns int) {
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
// full, new SYNs are forwarded unsplit (counted as syn_bypass_full).
func (a *Attachment) SetFull(full bool) error {
	var v classifyAdmission
	if full {
		v.Full = 1
	}
	if err := a.maps.PepsalAdmission.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write pepsal_admission: %w", err)
	}
	return nil
}

// Full reads the admission flag the classifier sees.
func (a *Attachment) Full() (bool, error) {
	var v classifyAdmission
	if err := a.maps.PepsalAdmission.Lookup(uint32(0), &v); err != nil {
		return false, fmt.Errorf("read pepsal_admission: %w", err)
	}
	return v.Full != 0, nil
}
