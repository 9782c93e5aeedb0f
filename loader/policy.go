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
		k := ExcludeKey(pfx)
		keep[k] = true
		if err := a.maps.PepsalExclude.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("set exclude %s: %w", pfx, err)
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

// ExcludeKey is the LPM key of a prefix: IPv4 is stored v4-mapped.
func ExcludeKey(p netip.Prefix) classifyExcludeKey {
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
