// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// TCPState is c's TCP state (unix.BPF_TCP_*), 0 when it cannot be read.
func TCPState(c *net.TCPConn) uint8 {
	var st uint8
	_ = WithFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err == nil {
			st = info.State
		}
		return err
	})
	return st
}

// SentBytes is how much sequence space was ever written into c's TCP:
// acknowledged (the SYN of a dialed socket included) plus still in the send
// queue. Read in that order, an ACK that lands in between can only make the
// sum low, never high.
func SentBytes(c *net.TCPConn) (written uint64, state uint8, err error) {
	err = WithFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("TCP_INFO: %w", err)
		}
		outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			return fmt.Errorf("SIOCOUTQ: %w", err)
		}
		written, state = info.Bytes_acked+uint64(outq), info.State
		return nil
	})
	return written, state, err
}

// DataReceived is how many data bytes c's TCP received in all, once its FIN
// is in: TCP_INFO's bytes_received counts sequence space up to rcv_nxt, which
// includes the FIN (measured on 6.18: 13 data bytes and a FIN read as 14).
// Only called after EOF, when the FIN is always counted.
func DataReceived(c *net.TCPConn) (uint64, error) {
	var received uint64
	err := WithFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("TCP_INFO: %w", err)
		}
		received = info.Bytes_received
		return nil
	})
	if received > 0 {
		received-- // the FIN
	}
	return received, err
}
