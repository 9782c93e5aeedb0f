// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// FastOpen makes the long leg between two pepsals cost one round trip less:
// the dialing side puts the client's first bytes in its SYN, the accepting
// side takes them from the SYN, both without cookies (the peers are known
// to each other; an ordinary server ignores the data and gets it again after
// its handshake, which is TCP's own fallback).
type FastOpen struct {
	Dial   bool // send the client's first bytes in the upstream SYN
	Accept bool // accept data in SYNs on the listeners
	// AcceptFrom are the only sources whose SYN data is accepted (the
	// classifier forwards any other SYN carrying data unsplit): data in a
	// SYN is answered before the handshake proves its source address, so
	// it is taken only where that address cannot be spoofed (the
	// terminals' link). Empty: from nowhere.
	AcceptFrom []netip.Prefix
	Wait       time.Duration // how long to wait for the client's first bytes before dialing without them
}

// fastOpenQueue bounds the pending fast-open requests on a listener.
const fastOpenQueue = 4096

// acceptFastOpen enables cookie-less fast open on a listener socket.
func acceptFastOpen(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_FASTOPEN, fastOpenQueue); err != nil {
		return fmt.Errorf("set TCP_FASTOPEN: %w", err)
	}
	return sockopt.Wrap("TCP_FASTOPEN_NO_COOKIE", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1))
}

// Bits of net.ipv4.tcp_fastopen (include/net/tcp.h).
const (
	tfoServerEnable        = 0x2
	tfoServerNoCookie      = 0x200 // TFO_SERVER_COOKIE_NOT_REQD
	tfoServerEveryListener = 0x400 // TFO_SERVER_WO_SOCKOPT1
)

// KernelTakesSYNData says whether net.ipv4.tcp_fastopen makes every
// listener of this namespace take data in SYNs without a cookie, whatever
// pepsal sets on its own (an unreadable value says no).
func KernelTakesSYNData() bool {
	cur, err := sockopt.ReadSysctl("net/ipv4/tcp_fastopen")
	if err != nil {
		return false
	}
	var v int
	if _, err := fmt.Sscan(cur, &v); err != nil {
		return false
	}
	all := tfoServerEnable | tfoServerNoCookie | tfoServerEveryListener
	return v&all == all
}

// EnableServerFastOpen sets the server bit of net.ipv4.tcp_fastopen in this
// namespace (no socket option can) and returns the value to restore.
func EnableServerFastOpen() (old string, changed bool, err error) {
	cur, err := sockopt.ReadSysctl("net/ipv4/tcp_fastopen")
	if err != nil {
		return "", false, fmt.Errorf("read net.ipv4.tcp_fastopen: %w", err)
	}
	var v int
	if _, err := fmt.Sscan(cur, &v); err != nil {
		return "", false, fmt.Errorf("parse net.ipv4.tcp_fastopen %q: %w", cur, err)
	}
	if v&tfoServerEnable != 0 {
		return cur, false, nil
	}
	if err := sockopt.WriteSysctl("net/ipv4/tcp_fastopen", fmt.Sprint(v|tfoServerEnable)); err != nil {
		return "", false, fmt.Errorf("enable server fast open: %w", err)
	}
	return fmt.Sprint(v), true, nil
}
