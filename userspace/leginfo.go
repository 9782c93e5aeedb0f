package userspace

import (
	"net"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

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

// legInfo reads a socket's state; nil once the socket is closed.
func legInfo(c *net.TCPConn) *LegInfo {
	if c == nil {
		return nil
	}
	var li LegInfo
	err := sockopt.WithFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		li.CwndSegs, li.RTTMicros, li.Retransmits = info.Snd_cwnd, info.Rtt, info.Total_retrans
		li.SndMSS, li.SndWnd, li.RcvWnd = info.Snd_mss, info.Snd_wnd, info.Rcv_wnd
		li.BytesAcked, li.BytesRecvd = info.Bytes_acked, info.Bytes_received
		if info.Max_pacing_rate != ^uint64(0) {
			li.MaxPacingRate = info.Max_pacing_rate
		}
		li.CC, _ = unix.GetsockoptString(fd, unix.SOL_TCP, unix.TCP_CONGESTION)
		li.SndBuf, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		li.RcvBuf, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		nd, _ := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_NODELAY)
		li.NoDelay = nd != 0
		return nil
	})
	if err != nil {
		return nil
	}
	return &li
}
