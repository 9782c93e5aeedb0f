// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net"

	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// legInfo reads a socket's state; nil once the socket is closed.
func legInfo(c *net.TCPConn) *report.LegInfo {
	if c == nil {
		return nil
	}
	var li report.LegInfo
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
