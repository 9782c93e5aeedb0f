// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// ClassifierState is what the classifier reads to decide a new SYN, read
// from the pinned maps at one moment (`pepsal explain`, `pepsal status`).
// Prefixes are as stored: 16 bytes, IPv4 v4-mapped.
type ClassifierState struct {
	AllPorts     bool           // pepsal_config: every destination port is wanted
	Ports        []uint16       // pepsal_ports, sorted
	Exclude      []netip.Prefix // pepsal_exclude
	Ifaces       []Iface        // pepsal_ifaces
	ListenerV4   bool           // pepsal_listen holds a v4 listener
	ListenerV6   bool           // and a v6 one
	Full         bool           // pepsal_admit: new SYNs go unsplit
	SynDataCheck bool           // pepsal_admit: SYN data only from FastOpenFrom
	FastOpenFrom []netip.Prefix // pepsal_tfo_from
	SourcesFull  []netip.Addr   // pepsal_srcfull, unmapped
}

// storedPrefix is an LPM key as a prefix of 16-byte addresses.
func storedPrefix(k classifyExcludeKey) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen))
}

// ClassifierState reads the maps the classifier decides a SYN from.
func (a *Attachment) ClassifierState() (ClassifierState, error) {
	var s ClassifierState
	cfg, err := a.Config()
	if err != nil {
		return s, err
	}
	s.AllPorts = cfg.AllPorts != 0
	var errs []error
	var port uint16
	var one uint8
	it := a.maps.PepsalPorts.Iterate()
	for it.Next(&port, &one) {
		s.Ports = append(s.Ports, port)
	}
	errs = append(errs, wrapIter("pepsal_ports", it.Err()))
	sort.Slice(s.Ports, func(i, j int) bool { return s.Ports[i] < s.Ports[j] })
	var k classifyExcludeKey
	it = a.maps.PepsalExclude.Iterate()
	for it.Next(&k, &one) {
		s.Exclude = append(s.Exclude, storedPrefix(k))
	}
	errs = append(errs, wrapIter("pepsal_exclude", it.Err()))
	it = a.maps.PepsalTfoFrom.Iterate()
	for it.Next(&k, &one) {
		s.FastOpenFrom = append(s.FastOpenFrom, storedPrefix(k))
	}
	errs = append(errs, wrapIter("pepsal_tfo_from", it.Err()))
	var adm classifyAdmission
	if err := a.maps.PepsalAdmit.Lookup(uint32(0), &adm); err != nil {
		errs = append(errs, fmt.Errorf("read pepsal_admit: %w", err))
	}
	s.Full, s.SynDataCheck = adm.Full != 0, adm.SynDataCheck != 0
	s.SourcesFull, err = a.SourcesFull()
	errs = append(errs, err)
	s.Ifaces, err = a.Ifaces()
	errs = append(errs, err)
	s.ListenerV4, s.ListenerV6 = a.ListenerCookie(ListenerV4) != 0, a.ListenerCookie(ListenerV6) != 0
	return s, errors.Join(errs...)
}

func wrapIter(m string, err error) error {
	if err != nil {
		return fmt.Errorf("read %s: %w", m, err)
	}
	return nil
}
