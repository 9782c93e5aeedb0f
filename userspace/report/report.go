// SPDX-License-Identifier: Apache-2.0

// Package report is the JSON schema of `pepsal status --json` and `pepsal
// conns --json`, in one place: the daemon fills these types, the CLI prints
// them, the integration tests and the benchmark decode them, so a renamed
// field cannot drift between copies. `pepsal conns --json` is a []ConnInfo,
// each with its legs (LegInfo, conns.go); the daemon part of the status is
// DaemonInfo (daemon.go) with its Stats and PeerStats (peer.go). Query
// (control.go) asks the daemon for them over its control socket, whose
// place (Control) both ends share, once it is sure the socket is pepsal's.
//
// It owns the types and their names on the wire, and the client's side of
// the control socket, nothing else: no logic beyond encoding, decoding and
// checking who serves there, no state (AuthReasons is a fixed list), and
// no import of pepsal's packages but loader (whose value types the status
// lists, and whose NetnsID keys the control socket's place).
package report

import "github.com/pepsal/pepsal/loader"

// StatusReport is `pepsal status --json`; the text form prints the same.
type StatusReport struct {
	Attached   bool              `json:"attached"`
	Serving    bool              `json:"serving"`
	PinDir     string            `json:"pin_dir,omitempty"`
	Ifaces     []loader.Iface    `json:"ifaces"`
	Programs   map[string]uint32 `json:"program_ids,omitempty"`
	Routing    *RoutingReport    `json:"routing,omitempty"`
	Listeners  map[string]uint64 `json:"listener_cookies,omitempty"`
	Counters   []loader.Counter  `json:"counters,omitempty"`
	Relay      *RelayReport      `json:"relay_map_entries,omitempty"`
	Daemon     *DaemonInfo       `json:"daemon,omitempty"`
	DaemonNote string            `json:"daemon_error,omitempty"`
	// OwnerPID is the `pepsal run --iface` daemon that removes the attachment
	// when it stops; 0: persistent (`pepsal attach`).
	OwnerPID   int  `json:"owner_pid,omitempty"`
	OwnerAlive bool `json:"owner_alive,omitempty"`
	// Problems say why the pins do not work as recorded here; status then fails.
	Problems []string `json:"problems,omitempty"`
	// Policy is what the classifier splits, read from its maps.
	Policy *PolicyReport `json:"policy,omitempty"`
}

// PolicyReport is which new connections the classifier considers:
// destination ports (--ports) and excluded destinations (--exclude).
type PolicyReport struct {
	AllPorts bool     `json:"all_ports"`
	Ports    []uint16 `json:"ports,omitempty"`
	Exclude  []string `json:"exclude,omitempty"` // as stored; IPv4 shown as IPv4
}

// RelayReport counts the kernel relay's map entries.
type RelayReport struct {
	Sockets    int `json:"sockets"`
	Directions int `json:"directions"`
	UserCounts int `json:"user_counts"` // pepsal_relayusr: one per direction, like directions
}

// RoutingReport is the policy routing that delivers diverted SYNs locally.
type RoutingReport struct {
	Fwmark       uint32 `json:"fwmark"`
	Table        int    `json:"table"`
	RulePriority int    `json:"rule_priority"`
	Rules        int    `json:"rules_present"`
	Routes       int    `json:"routes_present"`
}

// Counter is the value of the classifier counter name (as in bpf/pepsal.h);
// ok is false when the report has no counter of that name, so a caller can
// tell a renamed counter from one that stayed at zero.
func (r *StatusReport) Counter(name string) (v uint64, ok bool) {
	for _, c := range r.Counters {
		if c.Name == name {
			return c.Value, true
		}
	}
	return 0, false
}
