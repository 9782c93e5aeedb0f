// SPDX-License-Identifier: Apache-2.0

// Package explain says why the classifier would split a flow or leave it
// alone: Decide replays bpf/classify.c's decisions for a new SYN over a
// snapshot of the maps it reads (loader.ClassifierState), names the
// counter it would bump, and adds what the daemon would do with a diverted
// SYN (its destination policy). The route lookup and the snapshot's
// reading are the caller's (route.go, the CLI): Decide is pure.
package explain

import (
	"fmt"
	"net/netip"

	"github.com/pepsal/pepsal/loader"
)

// Route is what the router's routing says of a flow's destination, as
// classify.c's route() tells it apart.
type Route uint8

const (
	RouteOnward     Route = iota // forwarded to another host
	RouteLocal                   // addressed to the router itself (a local or broadcast route)
	RouteUnroutable              // no route, or an unreachable, blackholed or prohibited one
)

func (r Route) String() string {
	switch r {
	case RouteLocal:
		return "local"
	case RouteUnroutable:
		return "unroutable"
	}
	return "onward"
}

// Flow is a flow's first SYN as the classifier would see it: a plain SYN
// (no FIN or RST, no IPv4 options), from Src to Dst, arriving on Ingress.
type Flow struct {
	Src     netip.Addr
	Dst     netip.AddrPort
	Ingress int    // ifindex the SYN arrives on; 0: this host's own (never classified)
	Name    string // Ingress's name, for the verdict
	Route   Route
	SynData bool // the SYN carries data (TCP fast open)
	// Denied is the daemon's destination policy's word on Dst
	// (conn.DenyReason's text), "" if it connects.
	Denied string
}

// Verdict is what would happen to the flow.
type Verdict struct {
	Split bool `json:"split"`
	// Counter is the pepsal_counters field the classifier bumps for the
	// SYN ("" when no classifier sees it).
	Counter string `json:"counter"`
	// DeniedReason is set when the classifier diverts the SYN but the
	// daemon refuses the destination: the connection is reset, counted in
	// pepsal_connections_denied_total{reason=DeniedReason}.
	DeniedReason string `json:"denied_reason,omitempty"`
	Why          string `json:"why"`
}

// Decide replays divert_syn (bpf/classify.c) in its order: a return-only
// interface, the port, the exclusions, the route, the listener, SYN data,
// the admission flag, the client's share; then the daemon's destination
// policy for a diverted SYN.
func Decide(s loader.ClassifierState, f Flow) Verdict {
	iface, ok := findIface(s.Ifaces, f.Ingress)
	switch {
	case f.Ingress == 0:
		return Verdict{Why: fmt.Sprintf("%s is an address of this host: its own connections leave by egress, where no classifier runs: never split", f.Src)}
	case !ok:
		return Verdict{Why: fmt.Sprintf("the SYN arrives on %s, which has no pepsal classifier: forwarded untouched", f.Name)}
	case iface.ReturnOnly:
		return bypass("syn_bypass_return_iface", "%s is a return-only interface (--transparent replies only): no SYN is diverted there", f.Name)
	}
	port := f.Dst.Port()
	if !s.AllPorts && !hasPort(s.Ports, port) {
		return bypass("syn_bypass_port", "destination port %d is not in --ports", port)
	}
	dst := netip.AddrFrom16(f.Dst.Addr().As16())
	if p, ok := lookup(s.Exclude, dst); ok {
		return bypass("syn_bypass_excluded", "%s is in the excluded prefix %s (--exclude)", f.Dst.Addr(), Readable(p))
	}
	switch f.Route {
	case RouteLocal:
		return bypass("syn_bypass_local", "%s is addressed to the router itself: delivered locally", f.Dst.Addr())
	case RouteUnroutable:
		return bypass("syn_bypass_unroutable", "no route forwards %s (none, or unreachable, blackhole, prohibit): left to the kernel", f.Dst.Addr())
	}
	if v4 := f.Dst.Addr().Unmap().Is4(); v4 && !s.ListenerV4 || !v4 && !s.ListenerV6 {
		return bypass("syn_bypass_no_listener", "no proxy listener of this family is registered (no daemon serving): fail open")
	}
	if f.SynData {
		_, trusted := lookup(s.FastOpenFrom, netip.AddrFrom16(f.Src.As16()))
		if !trusted && s.SynDataCheck {
			return bypass("syn_data_untrusted", "the SYN carries data and %s is not in --fastopen-from", f.Src)
		}
	}
	if s.Full {
		return bypass("syn_bypass_full", "the daemon holds --max-conns (or ran short of fds): new connections go unsplit until below the low-water mark")
	}
	for _, a := range s.SourcesFull {
		if a == f.Src.Unmap() {
			return bypass("syn_bypass_source", "client %s holds --max-conns-per-client connections", f.Src)
		}
	}
	if f.Denied != "" {
		return Verdict{Counter: "syn_diverted", DeniedReason: f.Denied,
			Why: fmt.Sprintf("diverted, then refused by the daemon's destination policy (%s): the client's connection is reset", f.Denied)}
	}
	return Verdict{Split: true, Counter: "syn_diverted", Why: "diverted to the proxy: split"}
}

func bypass(counter, format string, args ...any) Verdict {
	return Verdict{Counter: counter, Why: fmt.Sprintf(format, args...) + ": forwarded unsplit"}
}

func findIface(ifaces []loader.Iface, index int) (loader.Iface, bool) {
	for _, i := range ifaces {
		if i.Index == index {
			return i, true
		}
	}
	return loader.Iface{}, false
}

func hasPort(ports []uint16, p uint16) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// lookup is an LPM trie's answer: the longest stored prefix holding a
// (both 16 bytes), if any.
func lookup(prefixes []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	var best netip.Prefix
	found := false
	for _, p := range prefixes {
		if p.Contains(a) && (!found || p.Bits() > best.Bits()) {
			best, found = p, true
		}
	}
	return best, found
}

// Readable is a stored prefix as an operator wrote it: a v4-mapped one as
// its IPv4 prefix (::ffff:10.0.0.0/104 is 10.0.0.0/8).
func Readable(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p
}
