// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
)

// Wanted is an interface the classifier belongs on, by name: an interface
// deleted and created again (PPP, VLAN, WireGuard, a modem) comes back
// with a new ifindex and without the classifier, and a daemon puts it back.
type Wanted struct {
	Name       string
	ReturnOnly bool // only replies to local sockets are taken there (--return-iface)
}

// Wanted lists the interfaces of cfg by name: every one of Ifaces, then
// those of ReturnIfaces that are not among them (as targets does by index).
func (cfg Config) Wanted() []Wanted {
	var out []Wanted
	for _, name := range cfg.Ifaces {
		out = append(out, Wanted{Name: name})
	}
	for _, name := range cfg.ReturnIfaces {
		if !slices.Contains(cfg.Ifaces, name) {
			out = append(out, Wanted{Name: name, ReturnOnly: true})
		}
	}
	return out
}

// Placed is where a Wanted interface stands after Reattach.
type Placed struct {
	Name       string
	ReturnOnly bool
	Ifindex    int  // the interface of that name now; 0: there is none
	On         bool // the classifier is on it
	// Attached: this call put the classifier on it (the interface is new,
	// or the classifier recorded on its ifindex was missing).
	Attached bool
	Err      error // why the classifier is not on an interface that exists
}

// ErrReplaced: the pins this handle was opened on are gone or were made
// again (`pepsal detach`, then an attach): nothing is attached through it.
var ErrReplaced = errors.New("the attachment was removed or replaced since it was opened")

// Reattach puts the classifier back on each wanted interface that exists
// without it, and forgets the interfaces recorded in pepsal_ifaces that no
// longer exist (their tc attachment went with them; the record and a tcx
// link pin are left). What it attaches is owned as the attachment is: the
// owner is not changed. It holds the attachment lock, so it never
// interleaves with an attach or a detach, and fails with ErrReplaced once
// the pins it was opened on are gone.
func (a *Attachment) Reattach(want []Wanted, tcMode string) ([]Placed, error) {
	unlock, err := lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !a.samePins() {
		return nil, ErrReplaced
	}
	a.pruneGoneIfaces()
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(a.Dir, pinClassify), nil)
	if err != nil {
		return nil, fmt.Errorf("load pinned classifier: %w", err)
	}
	defer prog.Close()
	out := make([]Placed, 0, len(want))
	for _, w := range want {
		out = append(out, a.place(prog, w, tcMode))
	}
	return out, nil
}

// place puts the classifier on the interface named w.Name, if there is one
// and it lacks it.
func (a *Attachment) place(prog *ebpf.Program, w Wanted, tcMode string) Placed {
	p := Placed{Name: w.Name, ReturnOnly: w.ReturnOnly}
	ifc, err := net.InterfaceByName(w.Name)
	if err != nil {
		return p // absent
	}
	p.Ifindex = ifc.Index
	var st classifyIfaceState
	if a.maps.PepsalIfaces.Lookup(uint32(ifc.Index), &st) == nil {
		if classifierAttached(a.Dir, ifc.Index, st) == nil {
			p.On = true
			if st.ReturnOnly == 1 && !w.ReturnOnly {
				_, p.Err = a.promote(target{w.Name, ifc.Index, false}, st)
			}
			return p
		}
		// Recorded but not there: the ifindex was reused by a new
		// interface, or someone removed the filter. Start afresh.
		_ = a.detachIface(ifc.Index)
	}
	if _, err := a.attachTarget(prog, target{w.Name, ifc.Index, w.ReturnOnly}, tcMode); err != nil {
		p.Err = err
		return p
	}
	p.On, p.Attached = true, true
	return p
}

// samePins tells whether the pins in a.Dir are still the ones a was opened
// on: pepsal_ifaces pinned there is the map a holds.
func (a *Attachment) samePins() bool {
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(a.Dir, "pepsal_ifaces"), nil)
	if err != nil {
		return false
	}
	defer pinned.Close()
	mine, err := a.maps.PepsalIfaces.Info()
	if err != nil {
		return false
	}
	theirs, err := pinned.Info()
	if err != nil {
		return false
	}
	id1, ok1 := mine.ID()
	id2, ok2 := theirs.ID()
	return ok1 && ok2 && id1 == id2
}
