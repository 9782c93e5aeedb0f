// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is who holds the other end of a unix socket, as the kernel recorded
// it when that end connected (or listened): SO_PEERCRED and SO_PEERGROUPS.
// Neither can be forged by the peer, and neither changes when the peer's
// process later exits and its pid goes to another.
type Peer struct {
	PID      int32
	UID, GID uint32
	Groups   []uint32 // supplementary groups
}

// PeerOf reads who is at the other end of the unix socket c.
func PeerOf(c syscall.Conn) (Peer, error) {
	var p Peer
	err := WithFD(c, func(fd int) error {
		cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			return fmt.Errorf("SO_PEERCRED: %w", err)
		}
		p.PID, p.UID, p.GID = cred.Pid, cred.Uid, cred.Gid
		p.Groups, err = peerGroups(fd)
		return err
	})
	return p, err
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// (ERANGE, with the size it needs) that the peer has more groups.
func peerGroups(fd int) ([]uint32, error) {
	groups := make([]uint32, 32)
	for {
		size := uint32(len(groups) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&groups[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			return groups[:size/4], nil
		case errors.Is(errno, unix.ERANGE) && int(size/4) > len(groups):
			groups = make([]uint32, size/4)
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		}
	}
}
