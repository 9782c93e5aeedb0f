// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// createRelayMaps creates and pins the kernel relay's maps without its
// verdict: a splice daemon never loads the program, and a kernel that cannot
// run it (EnableKernelRelay says why) still gets an attachment.
func createRelayMaps(dir string, conns int) error {
	spec, err := loadRelay()
	if err != nil {
		return err
	}
	spec.Programs = nil
	sizeConnMaps(spec, conns)
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		return fmt.Errorf("create relay maps: %w", err)
	}
	coll.Close()
	return nil
}

// EnableKernelRelay makes the attachment ready for the kernel relay: it
// probes the kernel (ProbeKernelRelay), then loads and pins the verdict,
// unless an earlier daemon did, and attaches it to pepsal_relay (again:
// attaching the same program is harmless, and a daemon killed between pin
// and attach left it pinned but not attached). An *Unsupported error means
// this kernel cannot relay safely; nothing was attached then.
func (a *Attachment) EnableKernelRelay() error {
	if err := ProbeKernelRelay(); err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	pin := filepath.Join(a.Dir, pinRelay)
	prog, err := ebpf.LoadPinnedProgram(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		conns, cerr := connCapacity(a.Dir)
		if cerr != nil {
			return cerr
		}
		coll, lerr := loadObject(a.Dir, loadRelay, conns, pinRelay)
		if lerr != nil {
			return lerr
		}
		prog, err = coll.DetachProgram(pinRelay), nil
		coll.Close()
	}
	if err != nil {
		return fmt.Errorf("open pinned %s: %w", pinRelay, err)
	}
	defer prog.Close()
	// A program attached to a map stays as long as the map (pinned) lives.
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  a.relay.PepsalRelay.FD(),
		Program: prog,
		Attach:  ebpf.AttachSkSKBVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach relay verdict to pepsal_relay: %w", err)
	}
	return nil
}

// RelayDir is one direction of a kernel-relayed connection, as BPF counts it.
type RelayDir = relayRelayDir

// Relay is the userspace side of the sockmap relay maps.
type Relay struct {
	socks, dirs, user *ebpf.Map
}

// Relay returns the relay maps of the attachment.
func (a *Attachment) Relay() *Relay {
	return &Relay{socks: a.relay.PepsalRelay, dirs: a.relay.PepsalRelaydir, user: a.relay.PepsalRelayusr}
}

// RelaySide is one socket of a kernel-relayed connection, as Prepare needs it.
type RelaySide struct {
	Cookie uint64
	// Pre bytes from this socket were moved by userspace before insertion;
	// they count as passed and written, so the verdict's books balance.
	Pre uint64
	// SeqBase is the part of this socket's TCP_INFO bytes_acked that is not
	// data: 1 for a dialed socket (its SYN), 0 for an accepted one.
	SeqBase uint64
}

// Prepare creates the state of both directions of a connection, before
// either socket is inserted: the verdict must never see a socket it does not
// know. On error nothing is left in the maps.
func (r *Relay) Prepare(a, b RelaySide, budget uint64) (err error) {
	defer func() {
		if err != nil {
			r.Forget(a.Cookie, b.Cookie)
		}
	}()
	for _, d := range []struct{ src, dst RelaySide }{{a, b}, {b, a}} {
		dir := RelayDir{PeerCookie: d.dst.Cookie, PeerBase: d.dst.SeqBase, Budget: budget, PassedBytes: d.src.Pre}
		if err := r.dirs.Update(d.src.Cookie, dir, ebpf.UpdateNoExist); err != nil {
			return fmt.Errorf("relay state in pepsal_relaydir: %w", err)
		}
		if err := r.user.Update(d.src.Cookie, d.src.Pre, ebpf.UpdateNoExist); err != nil {
			return fmt.Errorf("relay state in pepsal_relayusr: %w", err)
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
