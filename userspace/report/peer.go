// SPDX-License-Identifier: Apache-2.0

package report

// PeerStats is the warm-path part of `pepsal status`: the terminal's pool,
// the gateway's listener, or both.
type PeerStats struct {
	Pool    *PeerPoolStats    `json:"pool,omitempty"`
	Gateway *PeerGatewayStats `json:"gateway,omitempty"`
}

// PeerPoolStats is the terminal's part of `pepsal status`.
type PeerPoolStats struct {
	Gateway      string `json:"gateway"`
	Size         int    `json:"size"`
	Idle         int    `json:"idle"`
	InUse        int    `json:"in_use"`
	Dialing      int    `json:"dialing"`
	Refills      uint64 `json:"refills"`       // connections opened and greeted by the gateway
	DialFailures uint64 `json:"dial_failures"` // dials that failed or met no pepsal gateway
	Taken        uint64 `json:"taken"`         // client flows that rode a warm connection
	Recycled     uint64 `json:"recycled"`      // closed idle at their maximum age
	Dead         uint64 `json:"dead"`          // found closed by the gateway when taken
	// Client flows sent the fast-open way instead: the pool was empty
	// (a burst) or the gateway was unreachable (backing off).
	FallbackEmpty uint64 `json:"fallback_empty"`
	FallbackDown  uint64 `json:"fallback_down"`
	BackoffMS     int64  `json:"backoff_ms"`
	LastError     string `json:"last_error,omitempty"`
}

// PeerGatewayStats is the gateway's part of `pepsal status`.
type PeerGatewayStats struct {
	Listen     string            `json:"listen"`
	Accepted   uint64            `json:"accepted"`    // connections from terminals
	Waiting    int64             `json:"waiting"`     // idle, no header yet (a terminal's pool)
	Served     uint64            `json:"served"`      // headers accepted: client flows relayed
	IdleClosed uint64            `json:"idle_closed"` // closed by the terminal, or idle past the limit, before a header
	Refused    map[string]uint64 `json:"auth_failures"`
	// PacedStarts: flows that started with others toward the same terminal
	// and were paced to a share of its link for their first round trips.
	PacedStarts uint64 `json:"paced_starts"`
	Starting    int    `json:"starting"` // flows in their first round trips now
}

// Reasons a gateway refuses a peer connection, as counted.
const (
	AuthGarbage    = "garbage"    // not a header of this protocol
	AuthReplay     = "replay"     // a header made for another connection
	AuthBadMAC     = "bad_mac"    // wrong key or altered header
	AuthIncomplete = "incomplete" // header not complete within the deadline
	AuthNotAllowed = "not_allowed"
	AuthOverload   = "overload" // too many connections waiting for a header
)

// AuthReasons lists every reason, for status and metrics.
var AuthReasons = []string{AuthGarbage, AuthReplay, AuthBadMAC, AuthIncomplete, AuthNotAllowed, AuthOverload}
