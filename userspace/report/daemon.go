// SPDX-License-Identifier: Apache-2.0

package report

// DaemonInfo is what the daemon reports about itself.
type DaemonInfo struct {
	PID            int         `json:"pid"`
	Version        string      `json:"version"`
	Relay          string      `json:"relay"`                 // in use
	RelayAsked     string      `json:"relay_asked,omitempty"` // --relay
	Off            []Off       `json:"off,omitempty"`         // what the kernel cannot give
	Listeners      []string    `json:"listeners"`
	ConnectTimeout string      `json:"connect_timeout"`
	UptimeSeconds  float64     `json:"uptime_seconds"`
	Goroutines     int         `json:"goroutines"`
	OpenFDs        int         `json:"open_fds"`
	HeapBytes      uint64      `json:"heap_bytes"` // Go heap objects, live or not yet swept
	Stats          Stats       `json:"stats"`
	Peer           *PeerStats  `json:"peer,omitempty"` // warm paths between two pepsals
	Listen         ListenStats `json:"listen"`
	// ForwardFilter is what the daemon found of the router's filtering of
	// forwarded traffic at its start, and what it does about it.
	ForwardFilter *ForwardFilter `json:"forward_filter,omitempty"`
	// Interfaces are the interfaces the daemon follows by name (none
	// without --iface: it serves an attachment made by `pepsal attach`).
	Interfaces []IfaceHealth `json:"interfaces,omitempty"`
	// Role is --role ("": none); Presets what the legs are tuned to, by
	// the role and the flags, in words.
	Role    string   `json:"role,omitempty"`
	Presets []string `json:"presets,omitempty"`
	// RTOBound is the long legs' retransmission bound (--rto-max); nil:
	// off, or the kernel has none (Off says so).
	RTOBound *RTOBound `json:"rto_bound,omitempty"`
	// Outages is the warm paths' outage watch (--outage-probe); nil: off.
	Outages *OutageStats `json:"outages,omitempty"`
	// Deny are the destinations refused besides this host's own (--deny).
	Deny []string `json:"deny,omitempty"`
	SplitStats
}

// OutageStats: the long legs toward the other pepsal through link
// outages (--outage-probe). A remote with stalled legs is pinged every
// probe interval; silent for silence_ms it is down; its first answer ends
// the outage, and its stalled legs are made to retransmit at once.
type OutageStats struct {
	ProbeMs   int64  `json:"probe_ms"`
	SilenceMs int64  `json:"silence_ms"`
	Probes    uint64 `json:"probes"`
	Seen      uint64 `json:"seen"`       // outages that ended
	TotalMs   int64  `json:"total_ms"`   // their lengths, summed: from the last answer before to the first after
	LongestMs int64  `json:"longest_ms"` // the longest
	LastMs    int64  `json:"last_ms"`    // the latest
	// LastRecoveryMs is the latest return's answered probe round trip: the
	// link was back at most this long before its legs were kicked.
	LastRecoveryMs int64  `json:"last_recovery_ms"`
	Kicked         uint64 `json:"kicked"`      // stalled legs made to retransmit
	KickFailed     uint64 `json:"kick_failed"` // errors the kernel refused
	NotIPv4        uint64 `json:"not_ipv4"`    // stalled legs over IPv6: Linux has no RFC 6069 there
	Probing        int    `json:"probing"`     // remotes probed now
	Down           int    `json:"down"`        // of them, silent now
}

// RTOBound is --rto-max in force: per leg in words ("off" where the leg
// is never long), and how many legs were bounded or left alone since start.
type RTOBound struct {
	Client string `json:"client"`
	Server string `json:"server"`
	Set    uint64 `json:"set"` // legs bounded
	// ShortLeg: --role auto, the handshake RTT is short (not the link).
	ShortLeg uint64 `json:"short_leg"`
	// NoRTT: --role auto, no handshake RTT measured yet (a fast-open child).
	NoRTT  uint64 `json:"no_rtt"`
	Failed uint64 `json:"failed"` // the kernel refused the option
}

// ListenStats are the proxy listeners' backlog and the namespace's listen
// queue counters (TcpExt of /proc/net/netstat, read in the daemon's
// namespace: every listener of it counts, not only pepsal's).
type ListenStats struct {
	// Backlog is the proxy listeners' (SYN and accept queue length):
	// an eighth of --max-conns within 512..65535, capped by
	// net.core.somaxconn.
	Backlog int `json:"backlog"`
	// Overflows (ListenOverflows): SYNs or handshake ACKs dropped because
	// an accept queue was full. Drops (ListenDrops) counts those and other
	// drops at a listener.
	Overflows uint64 `json:"listen_overflows"`
	Drops     uint64 `json:"listen_drops"`
	// SYN cookies sent (a SYN queue full, or tcp_syncookies=2), valid
	// ones received in an ACK, and invalid ones.
	CookiesSent   uint64 `json:"syncookies_sent"`
	CookiesRecv   uint64 `json:"syncookies_recv"`
	CookiesFailed uint64 `json:"syncookies_failed"`
	// Unreadable says why the counters are missing (all 0).
	Unreadable string `json:"unreadable,omitempty"`
}

// ForwardFilter is --forward-filter as the daemon applies it: split
// connections bypass the router's forward hook.
type ForwardFilter struct {
	Mode       string `json:"mode"`                  // check, mirrored or ignore
	Found      string `json:"found"`                 // what filters forwarded traffic, read at start ("none")
	ServerMark uint32 `json:"server_mark,omitempty"` // SO_MARK of server legs (mirrored)
}

// SplitStats are the pipeline's totals that the connection table does not
// keep (yet).
type SplitStats struct {
	// LocalFailed counts connections reset because accept's follow-up or the
	// upstream dial ran out of a local resource.
	LocalFailed uint64 `json:"local_failed"`
	// UpstreamTuningSkipped counts upstream sockets dialed without their
	// sock_ops tuning because pepsal_upstream could not take them (full).
	UpstreamTuningSkipped uint64 `json:"upstream_tuning_skipped"`
}

// Stats are the daemon's totals since start.
type Stats struct {
	Accepted       uint64 `json:"accepted"`
	Active         int64  `json:"active"`
	Completed      uint64 `json:"completed"`
	Reset          uint64 `json:"reset"`
	UpstreamFailed uint64 `json:"upstream_failed"`
	LoopRefused    uint64 `json:"loop_refused"`
	DestDenied     uint64 `json:"dest_denied"`        // destination refused by the policy (this host, link-local, --deny, ...): reset, nothing dialed
	Fallback       uint64 `json:"userspace_fallback"` // sockmap mode: relayed in userspace instead
	BytesToServer  uint64 `json:"bytes_to_server"`
	BytesToClient  uint64 `json:"bytes_to_client"`
	KernelBytes    uint64 `json:"kernel_bytes"` // of both, moved by the sk_skb verdict
	// FallbackByReason and DestDeniedByReason split Fallback and
	// DestDenied by reason (the metric labels).
	FallbackByReason   map[string]uint64 `json:"userspace_fallback_by_reason,omitempty"`
	DestDeniedByReason map[string]uint64 `json:"dest_denied_by_reason,omitempty"`
	// Admission (0 / false without a limit).
	MaxConns  int    `json:"max_conns"`
	LowWater  int    `json:"low_water"`
	Full      bool   `json:"full"`               // new connections are forwarded unsplit now
	FullTrips uint64 `json:"full_trips"`         // times the limit (or a shortage) stopped diverting
	Shortages uint64 `json:"resource_shortages"` // accepts and dials that ran out of fds, memory or map room
	FDLimit   uint64 `json:"fd_limit"`
	// ShortageCeiling > 0: a resource shortage lowered the limit to it
	// for a while (fds, memory or map room ran out before --max-conns).
	ShortageCeiling int `json:"shortage_ceiling,omitempty"`
	// The per-client share (--max-conns-per-client; 0: none): the client
	// addresses at it now (their new connections go unsplit), and how many
	// times one reached it.
	MaxConnsPerClient int    `json:"max_conns_per_client"`
	LowWaterPerClient int    `json:"low_water_per_client"`
	ClientsAtLimit    int    `json:"clients_at_limit"`
	ClientLimitTrips  uint64 `json:"client_limit_trips"`
}

// Off is a feature pepsal turned off because the kernel cannot give it.
type Off struct {
	Feature string `json:"feature"`
	Why     string `json:"why"`
	Instead string `json:"instead"`
}

func (o Off) String() string { return o.Feature + " off: " + o.Why + "; " + o.Instead }
