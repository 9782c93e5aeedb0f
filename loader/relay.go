package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// RelayDir is one direction of a kernel-relayed connection, as BPF counts it.
type RelayDir = relayRelayDir

// Relay is the userspace side of the sockmap relay maps.
type Relay struct {
	socks, dirs, user *ebpf.Map
}

// Relay returns the relay maps of the attachment.
func (a *Attachment) Relay() *Relay {
	return &Relay{socks: a.relay.PepsalRelay, dirs: a.relay.PepsalRelayDirs, user: a.relay.PepsalRelayUser}
}

// Prepare creates the state of both directions of a connection, before
// either socket is inserted: the verdict must never see a socket it does not
// know. aPre bytes from a were already moved by userspace before insertion;
// they count as passed and written, so the verdict's books balance.
func (r *Relay) Prepare(a, b uint64, budget uint64, aPre uint64) error {
	for _, d := range []struct{ src, dst, pre uint64 }{{a, b, aPre}, {b, a, 0}} {
		if err := r.dirs.Put(d.src, RelayDir{PeerCookie: d.dst, Budget: budget, PassedBytes: d.pre}); err != nil {
			return fmt.Errorf("relay state: %w", err)
		}
		if err := r.user.Put(d.src, d.pre); err != nil {
			return fmt.Errorf("relay state: %w", err)
		}
	}
	return nil
}

// Insert puts a socket into pepsal_relay; from then on its data goes through
// the verdict. It fails for a socket that is no longer ESTABLISHED.
func (r *Relay) Insert(cookie uint64, fd int) error {
	if err := r.socks.Update(cookie, uint64(fd), ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("insert into pepsal_relay: %w", err)
	}
	return nil
}

// Dir reads a direction's counters.
func (r *Relay) Dir(cookie uint64) (RelayDir, error) {
	var d RelayDir
	err := r.dirs.Lookup(cookie, &d)
	return d, err
}

// SetUser publishes how many bytes of a direction userspace has written.
func (r *Relay) SetUser(cookie uint64, bytes uint64) error {
	return r.user.Put(cookie, bytes)
}

// Forget deletes the state of a connection's directions (its sockets leave
// pepsal_relay by themselves when they close).
func (r *Relay) Forget(cookies ...uint64) {
	for _, c := range cookies {
		_ = r.dirs.Delete(c)
		_ = r.user.Delete(c)
	}
}

// Entries counts the entries of the relay maps (for leak checks): sockets,
// directions and userspace byte counts.
func (r *Relay) Entries() (socks, dirs, user int, err error) {
	count := func(m *ebpf.Map) (int, error) {
		var k, v uint64
		var d RelayDir
		n := 0
		it := m.Iterate()
		if m == r.dirs {
			for it.Next(&k, &d) {
				n++
			}
		} else {
			for it.Next(&k, &v) {
				n++
			}
		}
		return n, it.Err()
	}
	var e1, e2, e3 error
	socks, e1 = count(r.socks)
	dirs, e2 = count(r.dirs)
	user, e3 = count(r.user)
	return socks, dirs, user, errors.Join(e1, e2, e3)
}
