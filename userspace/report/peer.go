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
	Listen   string `json:"listen"`
	Accepted uint64 `json:"accepted"` // connections from terminals
	// Waiting: held before their flows start, authenticating or idle in a
	// terminal's pool; Authenticating is the part of them not yet
	// authenticated. MaxWaiting caps Waiting (from the fd budget),
	// PerSource the authenticating connections of one source.
	Waiting        int64             `json:"waiting"`
	Authenticating int64             `json:"authenticating"`
	MaxWaiting     int               `json:"max_waiting"`
	PerSource      int               `json:"per_source_max"`
	Served         uint64            `json:"served"`      // headers accepted: client flows relayed
	IdleClosed     uint64            `json:"idle_closed"` // closed by the terminal, or idle past the limit, before a header
	Refused        map[string]uint64 `json:"auth_failures"`
	// PacedStarts: flows that started with others toward the same terminal
	// and were paced to a share of its link for their first round trips.
	PacedStarts uint64 `json:"paced_starts"`
	Starting    int    `json:"starting"` // flows in their first round trips now
	// The key file, read again when it changes: reloads that took, and
	// that failed (the keys before stay in force; KeyError says why, until
	// the next reload that takes).
	KeyReloads        uint64 `json:"key_reloads"`
	KeyReloadFailures uint64 `json:"key_reload_failures"`
	KeyError          string `json:"key_error,omitempty"`
	// Terminals: with a key ring, each id of the key file, and those
	// revoked since the start.
	Terminals []PeerTerminalStats `json:"terminals,omitempty"`
}

// PeerTerminalStats is one terminal of a gateway's key ring.
type PeerTerminalStats struct {
	ID      string   `json:"id"`
	Revoked bool     `json:"revoked,omitempty"` // removed from the key file
	Clients []string `json:"clients,omitempty"` // the client prefixes it may name; none: any
	Pooled  int      `json:"pooled"`            // authenticated, waiting for a header
	Served  uint64   `json:"served"`
	// RevokedClosed: pooled connections closed when its key was removed
	// or changed.
	RevokedClosed uint64            `json:"revoked_closed"`
	Refused       map[string]uint64 `json:"auth_failures"` // of its connections, once its id was read
}

// Reasons a gateway refuses a peer connection, as counted.
const (
	AuthGarbage    = "garbage"    // not a message of this protocol
	AuthReplay     = "replay"     // an auth or header made for another connection
	AuthBadMAC     = "bad_mac"    // wrong key or altered message
	AuthIncomplete = "incomplete" // auth cut short, or header not complete within its deadline
	AuthNotAllowed = "not_allowed"
	AuthOverload   = "overload"           // as many connections held before their flows as the fd budget allows
	AuthDeadline   = "auth_deadline"      // not authenticated within seconds of the accept (silent, or slow)
	AuthClosed     = "closed_before_auth" // closed before authenticating (a port scan, or a terminal of protocol version 1)
	AuthVersion    = "version"            // an auth message of another protocol version
	AuthPerSource  = "per_source"         // its source has as many connections authenticating as one may
	AuthFull       = "full"               // the admission limit (--max-conns) is reached
	AuthUnknownID  = "unknown_id"         // a key id the key file never held
	AuthRevoked    = "revoked"            // a key id removed from the key file
	AuthClientDeny = "client_not_allowed" // a header naming a client outside its terminal's clients=
)

// AuthReasons lists every reason, for status and metrics.
var AuthReasons = []string{AuthGarbage, AuthReplay, AuthBadMAC, AuthIncomplete, AuthNotAllowed, AuthOverload,
	AuthDeadline, AuthClosed, AuthVersion, AuthPerSource, AuthFull, AuthUnknownID, AuthRevoked, AuthClientDeny}
