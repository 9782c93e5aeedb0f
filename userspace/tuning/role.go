// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"errors"
	"fmt"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/enum"
)

// Role is which side of the satellite link a pepsal stands on: it presets
// the long leg. Its text is --role's value.
type Role uint8

const (
	NoRole   Role = iota // Linux defaults on both legs
	Gateway              // clients come from the satellite side: the client leg is long
	Terminal             // servers are across the satellite: the server leg is long
	Auto                 // each leg by its handshake round trip (the default)
)

// roleNames are the roles' texts, in value order.
var roleNames = enum.Names{NoRole: "none", Gateway: "gateway", Terminal: "terminal", Auto: "auto"}

// ErrBadRole: a role is one of roleNames.
var ErrBadRole = errors.New("role must be auto, gateway, terminal or none")

// String is the role as --role takes it.
func (r Role) String() string { return roleNames.Of(uint8(r), "role") }

// UnmarshalText reads what String wrote; an unknown role is ErrBadRole and
// leaves r as it was.
func (r *Role) UnmarshalText(text []byte) error {
	return enum.Parse(r, roleNames, text, func(text []byte) error { return fmt.Errorf("%w, not %q", ErrBadRole, text) })
}

// Roles preset the long (satellite) leg. Buffers hold a 600 ms path at
// 200 Mbit/s; the initial window is about one bandwidth-delay product of a
// 20 Mbit/s GEO path (1000 segments), so a 1 MB answer leaves in one round
// trip instead of four (measured: two PEPs, 1 MB 2.84 s at 128, 1.59 s at
// 1000); BBR paces it and keeps its rate through random loss where CUBIC halves it.
// defaultFastOpenWait is how long a terminal waits for a client's request to
// put it in the SYN: a LAN client sends it right after its handshake.
const defaultFastOpenWait = 20 * time.Millisecond

// The long leg's retransmission back-off is bounded (RTOMax): it faces the
// link's outages.
var longLeg = Leg{CC: "bbr", InitCwnd: 1000, InitRwnd: 2048, SndBuf: 16 << 20, RcvBuf: 16 << 20, QuickAck: true, RTOMax: RTOMax{Auto: true}, Long: true}

// AutoByRTT is --role auto: a leg's initial window is one bandwidth-delay
// product of the rate the long-leg preset is sized for (20 Mbit/s) at the
// leg's own handshake RTT, so a GEO leg (>= 480 ms) starts at the preset's
// 1000 segments, a LEO leg (40 ms) at about 70 and a LAN leg at the
// kernel's 10; legs of 150 ms or more (no terrestrial path within a
// continent, every GEO path) take the preset's congestion control.
// Measured on the bench's GEO bed: 100 KB over a split with Linux's
// defaults (bbr here) took one round trip more than no proxy; by RTT it
// matches the gateway preset.
var AutoByRTT = ByRTT{Rate: 20_000_000 / 8, MinWindow: 10, MaxWindow: uint16(longLeg.InitCwnd), LongRTT: 150 * time.Millisecond, LongCC: longLeg.CC}

// Tuning is the role's preset: a gateway's client leg, a terminal's server
// leg is the long one; auto tunes each leg by its round trip; none keeps
// Linux's defaults.
func (r Role) Tuning() Tuning {
	switch r {
	case Gateway:
		return Tuning{Client: longLeg, FastOpen: FastOpen{Accept: true}}
	case Terminal:
		return Tuning{Server: longLeg, FastOpen: FastOpen{Dial: true, Wait: defaultFastOpenWait}}
	case Auto:
		byRTT := Leg{RTOMax: RTOMax{Auto: true, LongRTT: AutoByRTT.LongRTT}, Long: true}
		return Tuning{Client: byRTT, Server: byRTT, ByRTT: AutoByRTT}
	}
	return Tuning{}
}
