// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Listener slots in pepsal_listen.
const (
	ListenerV4 = 0
	ListenerV6 = 1
)

// RegisterListener puts a listening socket into pepsal_listen; from then on
// the classifier diverts SYNs of that family to it.
func (a *Attachment) RegisterListener(slot uint32, fd int) error {
	if err := a.maps.PepsalListen.Update(slot, uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register listener in pepsal_listen: %w", err)
	}
	return nil
}

// ListenerCookie is the socket cookie of the registered listener, 0 if none.
func (a *Attachment) ListenerCookie(slot uint32) uint64 {
	var cookie uint64
	if err := a.maps.PepsalListen.Lookup(slot, &cookie); err != nil {
		return 0
	}
	return cookie
}
