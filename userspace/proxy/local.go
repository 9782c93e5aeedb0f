// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"

	"golang.org/x/sys/unix"
)

// localErrnos are the errors that say this host ran short of something.
var localErrnos = []unix.Errno{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EADDRNOTAVAIL}

// IsLocalFailure tells whether err says this host ran out of a resource
// (file descriptors, socket buffers, memory, local ports) rather than that
// the server refused, was unreachable or did not answer.
func IsLocalFailure(err error) bool {
	for _, e := range localErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// onLocalExhaustion is called when accept or an upstream dial fails for want
// of a local resource; the admission logic can hook OnExhausted to stop
// diverting new connections meanwhile.
func (p *Pipeline) onLocalExhaustion(err error) {
	if !IsLocalFailure(err) {
		return
	}
	// Out of fds or memory: new SYNs go unsplit at once (admission).
	if p.Table != nil {
		p.Table.ResourceShortage(err)
	}
	if f := p.OnExhausted; f != nil {
		f()
	}
}
