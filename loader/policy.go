// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"net/netip"
)

func (a *Attachment) setPolicy(cfg Config) error {
	var c classifyConfig
	if err := a.maps.PepsalConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	c.NetnsCookie = cookie
	c.Mark = cfg.Routing.Mark
	c.RouteTable = uint32(cfg.Routing.Table)
	c.RulePriority = uint32(cfg.Routing.Priority)
	// Fill the port set before narrowing from "all ports", so no wanted SYN is missed.
	wanted := map[uint16]bool{}
	for _, p := range cfg.Ports {
		wanted[p] = true
		if err := a.maps.PepsalPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("set port %d: %w", p, err)
		}
	}
	if len(cfg.Ports) == 0 {
		c.AllPorts = 1
	}
	if err := a.maps.PepsalConfig.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	var port uint16
	var one uint8
	var stale []uint16
	iter := a.maps.PepsalPorts.Iterate()
	for iter.Next(&port, &one) {
		if !wanted[port] {
			stale = append(stale, port)
		}
	}
	for _, p := range stale {
		_ = a.maps.PepsalPorts.Delete(p)
	}

	keep := map[classifyExcludeKey]bool{}
	for _, pfx := range cfg.Exclude {
		for _, k := range ExcludeKeys(pfx) {
			keep[k] = true
			if err := a.maps.PepsalExclude.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("set exclude %s: %w", pfx, err)
			}
		}
	}
	var k classifyExcludeKey
	var staleKeys []classifyExcludeKey
	iter = a.maps.PepsalExclude.Iterate()
	for iter.Next(&k, &one) {
		if !keep[k] {
			staleKeys = append(staleKeys, k)
		}
	}
	for _, k := range staleKeys {
		_ = a.maps.PepsalExclude.Delete(k)
	}
	return nil
}

// mappedRange is where the classifier's keys hold IPv4 destinations.
var mappedRange = netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff}), 96)

// ExcludeKeys are the LPM keys of an --exclude prefix. The classifier looks
// every destination up as 16 bytes, IPv4 v4-mapped (::ffff:a.b.c.d), so an
// IPv4 prefix, or its mapped form (::ffff:10.0.0.0/104), is one mapped key.
// A native IPv6 prefix that covers the mapped range (::/0, ::/64) would
// exclude every IPv4 destination as one key: it becomes the keys that
// cover the same IPv6 space but the mapped range, one per bit between its
// length and 96 (at most 96 keys, for ::/0).
func ExcludeKeys(p netip.Prefix) []classifyExcludeKey {
	p = p.Masked()
	if p.Addr().Is4() || p.Bits() >= mappedRange.Bits() || !p.Contains(mappedRange.Addr()) {
		return []classifyExcludeKey{excludeKey(p)}
	}
	// The siblings of the mapped range's ancestors below p: the prefix of
	// each length bits+1..96 that shares the mapped range's first bits and
	// differs in its last.
	base := mappedRange.Addr().As16()
	var keys []classifyExcludeKey
	for bit := p.Bits(); bit < mappedRange.Bits(); bit++ {
		a := base
		a[bit/8] ^= 0x80 >> (bit % 8)
		keys = append(keys, excludeKey(netip.PrefixFrom(netip.AddrFrom16(a), bit+1)))
	}
	return keys
}

// excludeKey is the LPM key of one prefix: IPv4 is stored v4-mapped.
func excludeKey(p netip.Prefix) classifyExcludeKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return classifyExcludeKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

// Config returns the stored configuration.
func (a *Attachment) Config() (classifyConfig, error) {
	var c classifyConfig
	if err := a.maps.PepsalConfig.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	return c, nil
}

// Routing returns the policy routing this attachment installed.
func (a *Attachment) Routing() (Routing, error) {
	c, err := a.Config()
	if err != nil {
		return Routing{}, err
	}
	return Routing{Mark: c.Mark, Table: int(c.RouteTable), Priority: int(c.RulePriority)}, nil
}
