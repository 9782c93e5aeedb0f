// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// RTOMax is --rto-max on a leg: the bound on its retransmission timeout
// (TCP_RTO_MAX_MS, Linux 6.15+). Through an outage the timeout doubles at
// every retransmission up to the kernel's 120 s, so the first retransmission
// after the link returns may leave a minute after it; bounded, it leaves at
// most one bound after it (tests/linkemu/OUTAGE-STUDY.md). The bound also
// caps the timeout itself, min(bound, srtt+4 rttvar): below the leg's loaded
// round trip it would fire spuriously on a busy link, hence the derived
// default. The zero value is off.
type RTOMax struct {
	Fixed time.Duration // the bound; 0: Auto, or off
	Auto  bool          // the bound of the leg's handshake RTT (AutoRTOMax)
	// LongRTT: only a leg whose handshake RTT is at least this is bounded
	// (--role auto: only sock_ops knew which legs are long, userspace reads
	// the same RTT from TCP_INFO); 0: every leg it is set on.
	LongRTT time.Duration
	// GiveUp is the TCP_USER_TIMEOUT a bounded leg gets when its
	// UserTimeout is 0 (KernelGiveUp): since 6.15 the kernel computes its
	// give-up time from the socket's own bound (14 s of outage at 1 s).
	GiveUp time.Duration
	Stats  *RTOStats // what was decided per leg; nil: not counted
}

// The bound's limits and the derived one: TCP_RTO_MAX_MS takes 1 s to 120 s;
// AutoRTOMax is RTOMaxRTTs handshake RTTs, at least RTOMaxFloor.
const (
	MinRTOMax    = time.Second
	KernelRTOMax = 120 * time.Second // also the kernel's default bound
	// RTOMaxFloor keeps the bound above any loaded round trip a leg sees:
	// a GEO link with a full one-BDP queue measured 1.18 s (600 ms base).
	RTOMaxFloor = 2 * time.Second
	// RTOMaxRTTs handshake RTTs leave room for a queue of three
	// bandwidth-delay products before the bound comes near the round trip.
	RTOMaxRTTs = 4
	// AssumedRTT is a known-long leg's RTT when none was measured yet (a
	// fast-open child at accept): GEO, what the presets are sized for.
	AssumedRTT  = 600 * time.Millisecond
	kernelRTOLo = 200 * time.Millisecond // TCP_RTO_MIN
	// defaultRetries2 is net.ipv4.tcp_retries2's default.
	defaultRetries2 = 15
)

// RTOStats counts the bound's decisions, one per leg tuned.
type RTOStats struct {
	Set    atomic.Uint64 // bound set
	Short  atomic.Uint64 // --role auto: the leg's handshake RTT is below LongRTT
	NoRTT  atomic.Uint64 // --role auto: no handshake RTT measured yet
	Failed atomic.Uint64 // TCP_RTO_MAX_MS or TCP_INFO refused
}

// On says whether the bound applies to some legs.
func (m RTOMax) On() bool { return m.Auto || m.Fixed > 0 }

// ErrBadRTOMax: --rto-max is auto, 0 (off) or 1s to 120s.
var ErrBadRTOMax = errors.New("want auto, 0 (off) or a duration from 1s to 120s")

// ParseRTOMax reads --rto-max: auto, off or 0, or a duration.
func ParseRTOMax(text string) (RTOMax, error) {
	switch strings.ToLower(strings.TrimSpace(text)) {
	case "auto":
		return RTOMax{Auto: true}, nil
	case "off", "0":
		return RTOMax{}, nil
	}
	d, err := time.ParseDuration(text)
	if err != nil {
		return RTOMax{}, fmt.Errorf("%q: %w", text, ErrBadRTOMax)
	}
	m := RTOMax{Fixed: d}
	return m, m.Validate()
}

// Validate checks the bound's range, and that a bounded leg keeps a user
// timeout (the trap of GiveUp).
func (m RTOMax) Validate() error {
	if m.Fixed != 0 && (m.Fixed < MinRTOMax || m.Fixed > KernelRTOMax) {
		return fmt.Errorf("%s: %w", m.Fixed, ErrBadRTOMax)
	}
	if m.GiveUp < 0 {
		return fmt.Errorf("give-up time %s is negative", m.GiveUp)
	}
	return nil
}

// For is the bound of a leg whose handshake RTT is rtt (0: not measured);
// 0 leaves the kernel's.
func (m RTOMax) For(rtt time.Duration) time.Duration {
	if !m.On() || m.LongRTT > 0 && rtt < m.LongRTT {
		return 0
	}
	if m.Fixed > 0 {
		return m.Fixed
	}
	if rtt <= 0 {
		rtt = AssumedRTT
	}
	return AutoRTOMax(rtt)
}

// AutoRTOMax is the derived bound: RTOMaxRTTs handshake RTTs, within
// RTOMaxFloor..KernelRTOMax, in whole milliseconds as the option takes it.
func AutoRTOMax(rtt time.Duration) time.Duration {
	b := min(max(RTOMaxFloor, RTOMaxRTTs*rtt), KernelRTOMax)
	return b.Truncate(time.Millisecond)
}

// KernelGiveUp is how long the kernel retransmits before it gives a
// connection up with retries2 (net.ipv4.tcp_retries2) at its default bound
// of 120 s: tcp_model_timeout() with TCP_RTO_MIN, 924.6 s at the default 15.
// It is what --user-timeout 0 meant before a leg had its own bound.
func KernelGiveUp(retries2 int) time.Duration {
	if retries2 < 0 {
		return 0
	}
	thresh := bits.Len(uint(KernelRTOMax/kernelRTOLo)) - 1 // ilog2
	if retries2 <= thresh {
		return time.Duration((2<<retries2)-1) * kernelRTOLo
	}
	return time.Duration((2<<thresh)-1)*kernelRTOLo + time.Duration(retries2-thresh)*KernelRTOMax
}

// ErrNoRTOMax: the kernel has no TCP_RTO_MAX_MS (before Linux 6.15).
var ErrNoRTOMax = errors.New("the kernel has no TCP_RTO_MAX_MS (Linux 6.15 or later)")

// ProbeRTOMax sets the bound on a throwaway socket: ErrNoRTOMax (wrapping
// the kernel's answer) where the kernel does not take it.
func ProbeRTOMax() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe TCP_RTO_MAX_MS: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_RTO_MAX_MS, int(RTOMaxFloor.Milliseconds())); err != nil {
		return fmt.Errorf("%w: %w", ErrNoRTOMax, err)
	}
	return nil
}

// apply bounds an established leg by its RTT, and keeps it a user timeout
// (userTimeout, the leg's, or GiveUp).
func (m RTOMax) apply(c *net.TCPConn, userTimeout time.Duration) error {
	var rtt time.Duration
	err := sockopt.WithFD(c, func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return sockopt.Wrap("TCP_INFO", err)
		}
		rtt = time.Duration(info.Rtt) * time.Microsecond
		return nil
	})
	if err != nil {
		m.count(func(s *RTOStats) { s.Failed.Add(1) })
		return err
	}
	bound := m.For(rtt)
	if bound == 0 {
		if rtt == 0 {
			m.count(func(s *RTOStats) { s.NoRTT.Add(1) })
		} else {
			m.count(func(s *RTOStats) { s.Short.Add(1) })
		}
		return nil
	}
	giveUp := m.GiveUp
	if giveUp == 0 { // Validate refuses this; never a bound without a user timeout
		giveUp = KernelGiveUp(defaultRetries2)
	}
	err = sockopt.WithFD(c, func(fd int) error {
		if userTimeout == 0 {
			if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_USER_TIMEOUT, int(giveUp.Milliseconds())); err != nil {
				return sockopt.Wrap("TCP_USER_TIMEOUT", err)
			}
		}
		return sockopt.Wrap("TCP_RTO_MAX_MS", unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_RTO_MAX_MS, int(bound.Milliseconds())))
	})
	if err != nil {
		m.count(func(s *RTOStats) { s.Failed.Add(1) })
		return err
	}
	m.count(func(s *RTOStats) { s.Set.Add(1) })
	return nil
}

func (m RTOMax) count(f func(*RTOStats)) {
	if m.Stats != nil {
		f(m.Stats)
	}
}

// String is the bound in words, for status: "4x the handshake RTT within
// 2s-120s", "3s", "off".
func (m RTOMax) String() string {
	var s string
	switch {
	case m.Fixed > 0:
		s = m.Fixed.String()
	case m.Auto:
		s = fmt.Sprintf("%dx the handshake RTT within %gs-%gs", RTOMaxRTTs, RTOMaxFloor.Seconds(), KernelRTOMax.Seconds())
	default:
		return "off"
	}
	if m.LongRTT > 0 {
		s += fmt.Sprintf(" on a leg of %s or more", m.LongRTT)
	}
	if m.GiveUp > 0 {
		s += fmt.Sprintf(", user timeout %s (--user-timeout 0: the kernel's give-up time without the bound)", m.GiveUp)
	}
	return s
}
