// SPDX-License-Identifier: Apache-2.0

// Package forwardfilter tells whether the router filters forwarded traffic,
// which connections split by pepsal never meet: a diverted SYN ends on the
// router (INPUT) and the server leg leaves from it (OUTPUT), so FORWARD
// rules do not apply to them. It reads the namespace's netfilter (nftables
// over netlink; legacy x_tables by their getsockopt interface) and classifies
// what it finds; the CLI decides what to do about it (Mode).
package forwardfilter

import (
	"fmt"
	"strings"

	"github.com/pepsal/pepsal/userspace/internal/enum"
)

// Mode is what pepsal does when the router filters forwarded traffic
// (--forward-filter).
type Mode uint8

const (
	// Check refuses to start while forwarded traffic is filtered.
	Check Mode = iota
	// Mirrored: the operator says the forward policy is repeated for
	// pepsal's connections (input hook: the diverted mark; output hook:
	// the server legs' socket mark); pepsal marks its server legs.
	Mirrored
	// Ignore starts anyway, with a warning.
	Ignore
)

var modeNames = enum.Names{"check", "mirrored", "ignore"}

func (m Mode) String() string { return modeNames.Of(uint8(m), "mode") }

// UnmarshalText reads a mode by its name.
func (m *Mode) UnmarshalText(text []byte) error {
	return enum.Parse(m, modeNames, text, func(text []byte) error {
		return fmt.Errorf("must be check, mirrored or ignore, not %q", text)
	})
}

// Hook names of a base chain (the inet ones; other families are not ours).
const hookForward = "forward"

// Chain is one base chain as the kernel lists it.
type Chain struct {
	Family string // ip, ip6, inet (arp, bridge, netdev: never forwarded IP)
	Table  string
	Name   string
	Hook   string // prerouting, input, forward, output, postrouting
	Type   string // filter, nat, route
	Drop   bool   // policy drop
	// Rules is the chain's rule count; -1: the rules could not be read.
	Rules int
}

// filtersForwarded says whether c can refuse a forwarded packet: a filter
// chain of an IP family at the forward hook with a drop policy or any rule
// (a rule that only accepts still decides what the policy does not).
func (c Chain) filtersForwarded() bool {
	switch c.Family {
	case "ip", "ip6", "inet":
	default:
		return false // a bridge's forward hook sees bridged frames, not routed packets
	}
	return c.Hook == hookForward && c.Type == "filter" && (c.Drop || c.Rules != 0)
}

// String is "inet filter forward: policy drop, 3 rules".
func (c Chain) String() string {
	var what []string
	if c.Drop {
		what = append(what, "policy drop")
	}
	switch {
	case c.Rules < 0:
		what = append(what, "rules unreadable")
	case c.Rules == 1:
		what = append(what, "1 rule")
	case c.Rules > 1:
		what = append(what, fmt.Sprintf("%d rules", c.Rules))
	}
	return fmt.Sprintf("%s %s %s: %s", c.Family, c.Table, c.Name, strings.Join(what, ", "))
}

// Finding is what filters forwarded traffic in a namespace.
type Finding struct {
	Chains []Chain // nftables base chains (iptables-nft's among them), legacy FORWARD chains
	// Legacy names the legacy x_tables filter tables ("iptables",
	// "ip6tables") whose rules could not be read: their presence counts.
	Legacy []string
}

// Classify keeps the chains that filter forwarded traffic and the legacy
// filter tables: a pure function of what was listed.
func Classify(chains []Chain, legacy []string) Finding {
	var f Finding
	for _, c := range chains {
		if c.filtersForwarded() {
			f.Chains = append(f.Chains, c)
		}
	}
	f.Legacy = append(f.Legacy, legacy...)
	return f
}

// Filters says whether anything filters forwarded traffic.
func (f Finding) Filters() bool { return len(f.Chains) > 0 || len(f.Legacy) > 0 }

// String lists what filters, "; " between items, or "none".
func (f Finding) String() string {
	var items []string
	for _, c := range f.Chains {
		items = append(items, c.String())
	}
	for _, l := range f.Legacy {
		items = append(items, l+"-legacy filter table: rules not inspected")
	}
	if len(items) == 0 {
		return "none"
	}
	return strings.Join(items, "; ")
}
