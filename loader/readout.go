// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Iface is an interface the classifier is attached to.
type Iface struct {
	Index      int    `json:"ifindex"`
	Name       string `json:"name"`
	TCMode     string `json:"tc_mode"`
	ReturnOnly bool   `json:"return_only"`
}

// Ifaces lists the interfaces the classifier is attached to.
func (a *Attachment) Ifaces() ([]Iface, error) {
	var out []Iface
	var idx uint32
	var st classifyIfaceState
	iter := a.maps.PepsalIfaces.Iterate()
	for iter.Next(&idx, &st) {
		ifc := Iface{Index: int(idx), Name: "(gone)", TCMode: "tcx", ReturnOnly: st.ReturnOnly == 1}
		if st.TcMode == tcModeClsact {
			ifc.TCMode = "clsact"
		}
		if n, err := net.InterfaceByIndex(int(idx)); err == nil {
			ifc.Name = n.Name
		}
		out = append(out, ifc)
	}
	return out, iter.Err()
}

// ProgramIDs returns the kernel ids of the pinned programs, by name.
func (a *Attachment) ProgramIDs() map[string]uint32 {
	ids := map[string]uint32{}
	for _, name := range []string{pinClassify, pinSteer, pinRelay, pinTune} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(a.Dir, name), nil)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids[name] = uint32(id)
			}
		}
		p.Close()
	}
	return ids
}

// Problems lists why the attachment does not do what it records, in this
// namespace: an sk_lookup link that is not on this namespace, interfaces that
// are gone or lost their classifier, missing policy routing.
func (a *Attachment) Problems() []string {
	var out []string
	ino, err := NetnsID()
	if err != nil {
		return []string{err.Error()}
	}
	switch linkIno, err := steerLinkNetns(a.Dir); {
	case err != nil:
		out = append(out, err.Error())
	case linkIno == 0:
		out = append(out, "the sk_lookup link is missing or on a dead network namespace: no diverted connection reaches the listener")
	case linkIno != ino:
		out = append(out, fmt.Sprintf("the sk_lookup link is on network namespace inode %d, not this one (%d)", linkIno, ino))
	}
	gone := "interface ifindex %d no longer exists"
	if pid, _ := a.Owner(); pid == 0 {
		// Nothing follows the interfaces of a persistent attachment.
		gone += ": a persistent attachment (`pepsal attach`) does not follow interfaces; attach again once it is back, or serve with `pepsal run --iface`, which re-attaches by name"
	}
	var idx uint32
	var st classifyIfaceState
	iter := a.maps.PepsalIfaces.Iterate()
	for iter.Next(&idx, &st) {
		if _, err := netlink.LinkByIndex(int(idx)); err != nil {
			out = append(out, fmt.Sprintf(gone, idx))
			continue
		}
		if err := classifierAttached(a.Dir, int(idx), st); err != nil {
			out = append(out, err.Error())
		}
	}
	if err := iter.Err(); err != nil {
		out = append(out, fmt.Sprintf("read pepsal_ifaces: %v", err))
	}
	if r, err := a.Routing(); err != nil {
		out = append(out, err.Error())
	} else if rules, routes, err := r.Present(); err != nil {
		out = append(out, err.Error())
	} else if rules < len(families) || routes < len(families) {
		out = append(out, fmt.Sprintf("policy routing incomplete: %d/%d fwmark rules, %d/%d local routes", rules, len(families), routes, len(families)))
	}
	return out
}
