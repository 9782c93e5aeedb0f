package userspace

import "github.com/pepsal/pepsal/loader"

// ListenerRegistry steers diverted SYNs to the proxy's listeners
// (pepsal_listener; loader.Attachment implements it).
type ListenerRegistry interface {
	RegisterListener(slot uint32, fd int) error
	// ListenerCookie is the cookie of the socket in a slot, 0 if none.
	ListenerCookie(slot uint32) uint64
}

// The loader's handle is what the daemon wires in.
var _ ListenerRegistry = (*loader.Attachment)(nil)
