// SPDX-License-Identifier: Apache-2.0

package conn

import (
	"fmt"
	"strings"

	"github.com/pepsal/pepsal/userspace/internal/enum"
)

// Via is the relay that moves a connection's bytes.
type Via uint8

const (
	Splice             Via = iota // splice(2) in userspace
	Kernel                        // the sk_skb verdict, in the kernel (--relay sockmap)
	SpliceUntilOffload            // splice, then the kernel once it moved enough (--offload-after)
)

func viaNames() enum.Names { return enum.Names{"splice", "kernel", "splice until offload"} }

// String is how `pepsal conns` shows the relay.
func (v Via) String() string { return viaNames().Of(uint8(v), "via") }

// UnmarshalText reads what String wrote.
func (v *Via) UnmarshalText(text []byte) error { return parseInto(v, viaNames(), text, "relay") }

// FallbackReason classes why a connection given to the kernel relay is
// relayed in userspace instead. Its text is the metrics' label.
type FallbackReason uint8

const (
	NoFallback         FallbackReason = iota // relayed as asked
	FirstBytesPartial                        // fast open read part of an skb: the verdict would get it again
	ClosedBeforeInsert                       // a FIN came before the socket could enter the map
	InsertFailed                             // the sockmap refused a socket (full, ...)
	SetupFailed                              // cookies, sequence bases, relay state
)

// FallbackReasons lists every reason of a fallback (not NoFallback), in the
// order the metrics export them.
func FallbackReasons() []FallbackReason {
	return []FallbackReason{FirstBytesPartial, ClosedBeforeInsert, InsertFailed, SetupFailed}
}

func reasonNames() enum.Names {
	return enum.Names{"", "first_bytes_partial", "closed_before_insert", "insert_failed", "setup_failed"}
}

// String is the reason's metric label; "" for NoFallback.
func (r FallbackReason) String() string { return reasonNames().Of(uint8(r), "reason") }

// UnmarshalText reads what String wrote.
func (r *FallbackReason) UnmarshalText(text []byte) error {
	return parseInto(r, reasonNames(), text, "fallback reason")
}

// RelayState is how a connection's bytes are moved now: by the relay it
// was given, or by splice after the kernel relay could not take it (a
// fallback, with its reason and what went wrong). The zero value is Splice.
type RelayState struct {
	Via    Via
	Reason FallbackReason // NoFallback unless the kernel relay gave the connection up
	Detail string         // a fallback's cause, as `pepsal conns` shows it
}

// fallbackPrefix starts the text of a fallback.
const fallbackPrefix = "userspace: "

// Fallback is the state of a connection relayed by splice because the
// kernel relay could not take it, for reason; detail says what happened.
func Fallback(reason FallbackReason, detail string) RelayState {
	return RelayState{Via: Splice, Reason: reason, Detail: detail}
}

// Fallback says whether the connection fell back to userspace, and why.
func (r RelayState) Fallback() (FallbackReason, bool) { return r.Reason, r.Reason != NoFallback }

// String is how `pepsal conns` shows the relay: "splice", "kernel",
// "splice until offload", or "userspace: " and the cause of a fallback.
func (r RelayState) String() string {
	if r.Reason != NoFallback {
		return fallbackPrefix + r.Detail
	}
	return r.Via.String()
}

// UnmarshalText reads what String wrote (the relay column of `pepsal
// conns`). A fallback's reason is read back from the cause's wording, as
// the relays word it.
func (r *RelayState) UnmarshalText(text []byte) error {
	why, ok := strings.CutPrefix(string(text), fallbackPrefix)
	if !ok {
		var v Via
		if err := v.UnmarshalText(text); err != nil {
			return fmt.Errorf("relay state: %w", err)
		}
		*r = RelayState{Via: v}
		return nil
	}
	var reason FallbackReason
	switch {
	case strings.HasPrefix(why, "first bytes"):
		reason = FirstBytesPartial
	case strings.HasSuffix(why, "closed before insert"):
		reason = ClosedBeforeInsert
	case strings.HasPrefix(why, "client: "), strings.HasPrefix(why, "server: "):
		reason = InsertFailed
	default:
		reason = SetupFailed
	}
	*r = Fallback(reason, why)
	return nil
}
