// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net/netip"

	"github.com/pepsal/pepsal/loader"
)

// What the pipeline needs of the BPF side, as small interfaces: the daemon
// wires the loader's maps in, the unit tests wire fakes. Only loader's
// value types (what a map entry holds) cross these seams.

// DivertedSYNs is the classifier's record of the SYNs it diverted
// (pepsal_diverted; loader.Attachment implements it).
type DivertedSYNs interface {
	// TakeDiverted returns and deletes what the classifier recorded of a
	// connection's SYN (its ToS); false when there is no record.
	TakeDiverted(client, server netip.AddrPort) (loader.DivertInfo, bool)
}

// UpstreamTuner is the sock_ops side of the server legs' initial windows
// (pepsal_upstream; loader.Tuner implements it).
type UpstreamTuner interface {
	// RegisterUpstream marks a socket, by cookie, as a server leg before its
	// SYN leaves; it fails when the map is full.
	RegisterUpstream(cookie uint64) error
	// ForgetUpstream drops the mark once sock_ops has read it.
	ForgetUpstream(cookie uint64)
}

// The loader's handles are what the daemon wires in.
var (
	_ DivertedSYNs  = (*loader.Attachment)(nil)
	_ UpstreamTuner = (*loader.Tuner)(nil)
)
