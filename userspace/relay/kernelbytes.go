// SPDX-License-Identifier: Apache-2.0

package relay

import "github.com/pepsal/pepsal/userspace/conn"

// movedBytes is moved without the backlog: one map lookup per direction,
// no socket read (a metrics scrape reads it for every live connection).
func (k *Kernel) movedBytes(up, down *relayDir) conn.Moved {
	var m conn.Moved
	m.KernelToServer = k.redirected(up)
	m.KernelToClient = k.redirected(down)
	m.ToServer = up.userBytes.Load() + m.KernelToServer
	m.ToClient = down.userBytes.Load() + m.KernelToClient
	return m
}

// redirected is what the verdict redirected from d.src so far.
func (k *Kernel) redirected(d *relayDir) int64 {
	if !d.inMap {
		return 0
	}
	st, err := k.Maps.Dir(d.cookie)
	if err != nil {
		return 0
	}
	return int64(st.KernelBytes)
}
