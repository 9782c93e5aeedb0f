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
)

// roleNames are the roles' texts, in value order.
var roleNames = enum.Names{NoRole: "", Gateway: "gateway", Terminal: "terminal"}

// ErrBadRole: a role is "gateway", "terminal" or none.
var ErrBadRole = errors.New("role must be gateway or terminal")

// String is the role as --role takes it ("" for none).
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

var longLeg = Leg{CC: "bbr", InitCwnd: 1000, InitRwnd: 2048, SndBuf: 16 << 20, RcvBuf: 16 << 20, QuickAck: true}

// Tuning is the role's preset: a gateway's client leg, a terminal's server
// leg is the long one; no role keeps Linux's defaults.
func (r Role) Tuning() Tuning {
	switch r {
	case Gateway:
		return Tuning{Client: longLeg, FastOpen: FastOpen{Accept: true}}
	case Terminal:
		return Tuning{Server: longLeg, FastOpen: FastOpen{Dial: true, Wait: defaultFastOpenWait}}
	}
	return Tuning{}
}
