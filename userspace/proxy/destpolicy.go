// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"fmt"
	"net/netip"

	"github.com/pepsal/pepsal/userspace/conn"
)

// RouteKind is what this host's routing says of a destination, as far as
// the destination policy cares.
type RouteKind uint8

const (
	RouteOnward      RouteKind = iota // unicast out of an interface: another host
	RouteLocal                        // delivered here: an address of this host, or a local (AnyIP) route; IPv6 anycast
	RouteBroadcast                    // a broadcast route: a subnet's broadcast address
	RouteMulticast                    // a multicast route
	RouteUnreachable                  // no route, or unreachable, prohibited, blackholed: a dial fails by itself
)

// RouteLookup looks a destination up in this host's routing tables, as a
// connection from this host to it would be routed.
type RouteLookup interface {
	Route(netip.Addr) (RouteKind, error)
}

// DestPolicy decides which destinations pepsal connects to for a client:
// never this host (its addresses and local routes, loopback, the
// unspecified address), nothing link-local (a cloud metadata service sees
// the router's connection as the router's), no multicast or broadcast
// address, and nothing in the operator's Deny prefixes. IPv4-mapped IPv6
// addresses are judged as the IPv4 address they map (a dial goes there).
// Without it, a client could make pepsal connect to the services of the
// host it runs on, seen by them as coming from that host.
type DestPolicy struct {
	deny   []netip.Prefix
	routes RouteLookup
}

// NewDestPolicy is the policy refusing deny besides what it always
// refuses; routes finds this host's own addresses (nil: none known, for
// tests). IPv4-mapped prefixes are taken as their IPv4 prefixes.
func NewDestPolicy(deny []netip.Prefix, routes RouteLookup) DestPolicy {
	d := DestPolicy{routes: routes}
	for _, p := range deny {
		d.deny = append(d.deny, UnmapPrefix(p))
	}
	return d
}

// UnmapPrefix is p with an IPv4-mapped address as its IPv4 prefix
// (::ffff:10.0.0.0/104 is 10.0.0.0/8); other prefixes are unchanged.
func UnmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// DeniedError is a destination the policy refuses, and why.
type DeniedError struct {
	Dst    netip.Addr
	Reason conn.DenyReason
	Err    error // the route lookup's failure (RouteLookupFailed)
}

func (e *DeniedError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("destination %s refused (%s): %v", e.Dst, e.Reason, e.Err)
	}
	return fmt.Sprintf("destination %s refused (%s)", e.Dst, e.Reason)
}

func (e *DeniedError) Unwrap() error { return e.Err }

// Check says whether pepsal may connect to dst: nil, or a *DeniedError.
// What the address alone says is checked first, then the Deny prefixes,
// then the route (a failed lookup refuses: unchecked is not allowed).
func (d DestPolicy) Check(dst netip.Addr) error {
	a := dst.Unmap()
	if why := addressClass(a); why != conn.NotDenied {
		return &DeniedError{Dst: a, Reason: why}
	}
	for _, p := range d.deny {
		if p.Contains(a) {
			return &DeniedError{Dst: a, Reason: conn.DenyPrefix}
		}
	}
	if d.routes == nil {
		return nil
	}
	kind, err := d.routes.Route(a)
	if err != nil {
		return &DeniedError{Dst: a, Reason: conn.RouteLookupFailed, Err: fmt.Errorf("route lookup: %w", err)}
	}
	switch kind {
	case RouteLocal:
		return &DeniedError{Dst: a, Reason: conn.OwnAddress}
	case RouteBroadcast:
		return &DeniedError{Dst: a, Reason: conn.Broadcast}
	case RouteMulticast:
		return &DeniedError{Dst: a, Reason: conn.Multicast}
	}
	return nil
}

// addressClass is what an (unmapped) address alone says: the classes no
// route makes another host's.
func addressClass(a netip.Addr) conn.DenyReason {
	switch {
	case !a.IsValid() || a.IsUnspecified() || a.Is4() && a.As4()[0] == 0:
		return conn.Unspecified // 0.0.0.0/8: "this host on this network"
	case a.IsLoopback():
		return conn.Loopback
	case a.IsLinkLocalUnicast():
		return conn.LinkLocal
	case a.IsMulticast():
		return conn.Multicast
	case a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}:
		return conn.Broadcast
	}
	return conn.NotDenied
}
