// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Wrap names the option a failed setsockopt was setting; nil stays nil.
func Wrap(option string, err error) error {
	if err != nil {
		return fmt.Errorf("set %s: %w", option, err)
	}
	return nil
}

// Transparent is a net.ListenConfig / net.Dialer Control that lets the
// socket use addresses that are not the host's.
func Transparent(network, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = TransparentFD(int(fd), network) }); err != nil {
		return err
	}
	return serr
}

// TransparentFD lets a socket use addresses that are not the host's.
func TransparentFD(fd int, network string) error {
	var err error
	if network == "tcp6" {
		err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	} else {
		err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	}
	return Wrap("IP_TRANSPARENT", err)
}

// SetTOS gives the SYN a socket will send a ToS / traffic class: the
// client SYN's, on the upstream leg.
func SetTOS(fd int, network string, tos int) error {
	if network == "tcp6" {
		return Wrap("IPV6_TCLASS", unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos))
	}
	return Wrap("IP_TOS", unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, tos))
}
