// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetFastOpenFrom tells the classifier which SYNs carrying data it may
// divert. check: the daemon's listeners take data in SYNs without a cookie
// (fast open), so a SYN with data is diverted only from a prefix of from
// (and its leg gets its initial window before the handshake completes);
// from anywhere else it is forwarded unsplit (syn_data_untrusted). Without
// check every SYN is diverted as before. Prefixes no longer wanted are
// removed before new ones are added: meanwhile a SYN is forwarded unsplit
// rather than trusted wrongly.
func (a *Attachment) SetFastOpenFrom(check bool, from []netip.Prefix) error {
	m := a.maps.PepsalTfoFrom
	want := map[classifyExcludeKey]bool{}
	for _, p := range from {
		for _, k := range ExcludeKeys(p) {
			want[k] = true
		}
	}
	var k classifyExcludeKey
	var v uint8
	var stale []classifyExcludeKey
	for it := m.Iterate(); it.Next(&k, &v); {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove a --fastopen-from prefix: %w", err)
		}
	}
	for k := range want {
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("set --fastopen-from prefix %s/%d: %w", netip.AddrFrom16(k.Addr).Unmap(), k.Prefixlen, err)
		}
	}
	return a.updateAdmission(func(v *classifyAdmission) { v.SynDataCheck = b32(check) })
}

// FastOpenFrom reads back what SetFastOpenFrom wrote: whether SYN data is
// checked, and how many LPM keys the trusted prefixes took.
func (a *Attachment) FastOpenFrom() (check bool, keys int, err error) {
	var v classifyAdmission
	if err := a.maps.PepsalAdmit.Lookup(uint32(0), &v); err != nil {
		return false, 0, fmt.Errorf("read pepsal_admit: %w", err)
	}
	var k classifyExcludeKey
	var one uint8
	it := a.maps.PepsalTfoFrom.Iterate()
	for it.Next(&k, &one) {
		keys++
	}
	return v.SynDataCheck != 0, keys, it.Err()
}

// SetSourceFull tells the classifier whether a client address holds its
// share of connections (--max-conns-per-client): full, its new SYNs are
// forwarded unsplit (syn_bypass_source). IPv4 is stored v4-mapped.
func (a *Attachment) SetSourceFull(addr netip.Addr, full bool) error {
	k := classifySourceKey{Addr: addr.As16()}
	if !full {
		if err := a.maps.PepsalSrcfull.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear pepsal_srcfull %s: %w", addr, err)
		}
		return nil
	}
	if err := a.maps.PepsalSrcfull.Put(k, uint8(1)); err != nil {
		return fmt.Errorf("write pepsal_srcfull %s: %w", addr, err)
	}
	return nil
}

// ClearSourcesFull empties pepsal_srcfull: a daemon starts counting from
// its own connections, and a full mark left by one killed must not outlive it.
func (a *Attachment) ClearSourcesFull() error {
	var k classifySourceKey
	var v uint8
	var all []classifySourceKey
	for it := a.maps.PepsalSrcfull.Iterate(); it.Next(&k, &v); {
		all = append(all, k)
	}
	for _, k := range all {
		if err := a.maps.PepsalSrcfull.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear pepsal_srcfull: %w", err)
		}
	}
	return nil
}

// SourcesFull lists the client addresses the classifier holds at their limit.
func (a *Attachment) SourcesFull() ([]netip.Addr, error) {
	var k classifySourceKey
	var v uint8
	var out []netip.Addr
	it := a.maps.PepsalSrcfull.Iterate()
	for it.Next(&k, &v) {
		out = append(out, netip.AddrFrom16(k.Addr).Unmap())
	}
	return out, it.Err()
}
