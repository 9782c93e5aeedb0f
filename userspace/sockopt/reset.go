// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"fmt"
	"net"
)

// Reset closes with SO_LINGER 0, which sends an RST and drops unsent data:
// the right answer when the other leg was reset.
func Reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// ResetOnCrash gives a leg SO_LINGER {on, 0} for the life of the relay: if
// the daemon dies, the kernel's close of its fds sends an RST, and a peer
// that reads to EOF cannot take a cut-off stream for a complete one. A
// graceful end clears it before closing.
func ResetOnCrash(c *net.TCPConn) error {
	if err := c.SetLinger(0); err != nil {
		return fmt.Errorf("SO_LINGER: %w", err)
	}
	return nil
}
