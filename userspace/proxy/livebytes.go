// SPDX-License-Identifier: Apache-2.0

package proxy

import "github.com/pepsal/pepsal/userspace/conn"

// Bytes are the bytes relayed each way, of closed and live connections
// alike, and of them what the kernel relay (the sk_skb verdict) moved.
type Bytes struct {
	ToServer, ToClient             uint64
	KernelToServer, KernelToClient uint64
}

// LiveBytes counts every byte relayed so far: the closed connections'
// totals plus what each live connection has moved up to now, so that a
// counter grows during a long transfer and not only at its end. The totals
// and the list of live connections are read in one step under the lock
// (Remove moves a connection from one to the other in one step too), so a
// connection is counted once; its bytes are read after, outside the lock
// (a kernel-relayed one reads its relay's maps), so accepts never wait on
// a scrape. The work is one Moved per live connection.
func (t *Table) LiveBytes() Bytes {
	t.mu.Lock()
	b := Bytes{
		ToServer: t.bytesToServer.Load(), ToClient: t.bytesToClient.Load(),
		KernelToServer: t.kernelToServer.Load(), KernelToClient: t.kernelToClient.Load(),
	}
	live := make([]*conn.Conn, 0, len(t.conns))
	for _, c := range t.conns {
		live = append(live, c)
	}
	t.mu.Unlock()
	for _, c := range live {
		m := c.BytesMoved()
		b.ToServer += uint64(max(0, m.ToServer))
		b.ToClient += uint64(max(0, m.ToClient))
		b.KernelToServer += uint64(max(0, m.KernelToServer))
		b.KernelToClient += uint64(max(0, m.KernelToClient))
	}
	return b
}
