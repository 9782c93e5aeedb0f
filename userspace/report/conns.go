// SPDX-License-Identifier: Apache-2.0

package report

// ConnInfo is the exported view of a connection (for `pepsal conns`).
type ConnInfo struct {
	ID            uint64 `json:"id"`
	Client        string `json:"client"`
	Server        string `json:"server"`
	Relay         string `json:"relay"`
	Peer          string `json:"peer,omitempty"` // "warm": rode a warm path between two pepsals
	State         string `json:"state"`
	BytesToServer int64  `json:"bytes_to_server"`
	BytesToClient int64  `json:"bytes_to_client"`
	// Of those, moved by the sk_skb verdict without userspace (sockmap mode).
	KernelBytesToServer int64 `json:"kernel_bytes_to_server"`
	KernelBytesToClient int64 `json:"kernel_bytes_to_client"`
	// Redirected by the verdict toward that leg and not yet in its send
	// queue: what the kernel relay holds for it (bounded by --relay-budget).
	KernelBacklogToServer int64    `json:"kernel_backlog_to_server,omitempty"`
	KernelBacklogToClient int64    `json:"kernel_backlog_to_client,omitempty"`
	AgeSeconds            float64  `json:"age_seconds"`
	ClientLeg             *LegInfo `json:"client_leg,omitempty"`
	ServerLeg             *LegInfo `json:"server_leg,omitempty"`
}

// LegInfo is what the kernel says of one leg of a connection (TCP_INFO and
// socket options), for `pepsal conns`.
type LegInfo struct {
	CC          string `json:"cc"`
	CwndSegs    uint32 `json:"cwnd"`
	RTTMicros   uint32 `json:"rtt_us"`
	Retransmits uint32 `json:"retransmits"`
	SndMSS      uint32 `json:"snd_mss"`
	SndWnd      uint32 `json:"snd_wnd"`
	RcvWnd      uint32 `json:"rcv_wnd"`
	SndBuf      int    `json:"sndbuf"`
	RcvBuf      int    `json:"rcvbuf"`
	NoDelay     bool   `json:"nodelay"`
	BytesAcked  uint64 `json:"bytes_acked"`
	BytesRecvd  uint64 `json:"bytes_received"`
	// MaxPacingRate is the leg's pacing cap in bytes/s (SO_MAX_PACING_RATE);
	// 0: none. A gateway caps a warm flow's start when it shares it.
	MaxPacingRate uint64 `json:"max_pacing_rate,omitempty"`
}
