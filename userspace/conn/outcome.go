// SPDX-License-Identifier: Apache-2.0

package conn

import "github.com/pepsal/pepsal/userspace/internal/enum"

// Outcome is how a connection ended. Its text is the metrics' label.
type Outcome uint8

const (
	Completed      Outcome = iota // both sides closed cleanly
	WasReset                      // a side reset, or the relay aborted
	UpstreamFailed                // the server refused, was unreachable or silent
	LoopRefused                   // the destination was the proxy itself
	// LocalFailed: the connection could not be split for want of a resource
	// of this host (fds, memory, ports), not because of the server.
	// Table.Remove does not count it: the pipeline counts it in its split
	// stats.
	LocalFailed
	DestDenied // the destination policy refused it (DenyReason): nothing was dialed
)

func outcomeNames() enum.Names {
	return enum.Names{"completed", "reset", "upstream_failed", "loop_refused", "local_failed", "dest_denied"}
}

// String is the outcome's name, as the metrics label it.
func (o Outcome) String() string { return outcomeNames().Of(uint8(o), "outcome") }

// UnmarshalText reads what String wrote.
func (o *Outcome) UnmarshalText(text []byte) error {
	return parseInto(o, outcomeNames(), text, "outcome")
}

// DenyReason is why the destination policy refused a flow's destination.
// Its text is the metrics' label.
type DenyReason uint8

const (
	NotDenied         DenyReason = iota // the destination is allowed
	OwnAddress                          // routed locally: an address of this host (or a local route)
	Loopback                            // 127.0.0.0/8, ::1
	Unspecified                         // 0.0.0.0/8, :: (a connect there reaches this host)
	LinkLocal                           // 169.254.0.0/16 (metadata services), fe80::/10
	Multicast                           // 224.0.0.0/4, ff00::/8, or a multicast route
	Broadcast                           // 255.255.255.255, or a broadcast route (a subnet of this host's)
	DenyPrefix                          // in a --deny prefix
	RouteLookupFailed                   // the route lookup failed: refused rather than unchecked
)

// DenyReasons lists every reason of a refusal (not NotDenied), in the order
// the metrics export them.
func DenyReasons() []DenyReason {
	return []DenyReason{OwnAddress, Loopback, Unspecified, LinkLocal, Multicast, Broadcast, DenyPrefix, RouteLookupFailed}
}

func denyNames() enum.Names {
	return enum.Names{"", "own_address", "loopback", "unspecified", "link_local", "multicast", "broadcast", "deny_prefix", "route_lookup_failed"}
}

// String is the reason's metric label; "" for NotDenied.
func (r DenyReason) String() string { return denyNames().Of(uint8(r), "deny reason") }

// UnmarshalText reads what String wrote.
func (r *DenyReason) UnmarshalText(text []byte) error {
	return parseInto(r, denyNames(), text, "deny reason")
}
