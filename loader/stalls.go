// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Stall is a long leg in retransmission back-off, as sock_ops recorded its
// latest timeout (pepsal_stalled).
type Stall struct {
	Local, Remote netip.AddrPort // IPv4 unmapped
	SndUna        uint32         // its oldest unacknowledged byte
	Timeouts      uint32         // consecutive timeouts so far
	Age           time.Duration  // since the latest
	key           tuneStallKey
}

// Stalls reads the long legs' recorded timeouts (pepsal_stalled).
type Stalls struct{ m *ebpf.Map }

// Stalls opens pepsal_stalled, or says why it cannot (sock_ops not attached,
// an attachment of an older layout).
func (a *Attachment) Stalls() (*Stalls, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.Dir, "pepsal_stalled"), nil)
	if err != nil {
		return nil, fmt.Errorf("open pepsal_stalled: %w", err)
	}
	return &Stalls{m: m}, nil
}

// Close releases the map.
func (s *Stalls) Close() error { return s.m.Close() }

// List is every recorded stall; at most limit.
func (s *Stalls) List(limit int) ([]Stall, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil { // bpf_ktime_get_ns's clock
		return nil, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())
	var (
		out []Stall
		key tuneStallKey
		val tuneStall
	)
	it := s.m.Iterate()
	for len(out) < limit && it.Next(&key, &val) {
		st := Stall{
			Local:    netip.AddrPortFrom(netip.AddrFrom16(key.LocalAddr).Unmap(), key.LocalPort),
			Remote:   netip.AddrPortFrom(netip.AddrFrom16(key.RemoteAddr).Unmap(), key.RemotePort),
			SndUna:   val.SndUna,
			Timeouts: val.Timeouts,
			key:      key,
		}
		if now > val.LastNs {
			st.Age = time.Duration(now - val.LastNs)
		}
		out = append(out, st)
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("read pepsal_stalled: %w", err)
	}
	return out, nil
}

// Forget deletes a stall (kicked, or its remote proved alive); one that
// is already gone (a newer timeout replaced it, the LRU dropped it) is fine.
func (s *Stalls) Forget(st Stall) error {
	if err := s.m.Delete(st.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from pepsal_stalled: %w", err)
	}
	return nil
}
