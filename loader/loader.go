// SPDX-License-Identifier: Apache-2.0

// Package loader loads, attaches, pins and detaches pepsal's BPF side (the tc
// classifier, the sk_lookup steering program and their maps) and the policy
// routing it needs, per network namespace.
package loader

import (
	"errors"
	"sync"
)

// Attachment is an open handle on the pinned objects of this namespace.
type Attachment struct {
	Dir   string
	maps  classifyMaps
	relay relayMaps
	admMu sync.Mutex // pepsal_admit is read, changed and written whole
}

// Close releases the handle; the attachment itself stays (it is pinned).
func (a *Attachment) Close() error {
	return errors.Join(a.maps.Close(), a.relay.Close())
}

// ErrNotAttached means there is no pepsal attachment in this network namespace.
var ErrNotAttached = errors.New("pepsal is not attached in this network namespace")
