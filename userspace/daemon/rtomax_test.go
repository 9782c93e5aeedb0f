// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// TestRTOMaxOff: on a kernel without TCP_RTO_MAX_MS the bound comes off
// both legs and status says so; the probe is not run when no leg is
// bounded, and where it succeeds nothing changes.
func TestRTOMaxOff(t *testing.T) {
	failed := func() error { return fmt.Errorf("%w: %w", tuning.ErrNoRTOMax, unix.ENOPROTOOPT) }
	gw := tuning.Gateway.Tuning()
	gw.Client.UserTimeout = time.Minute
	off := rtoMaxOff(&gw, failed)
	if len(off) != 1 || gw.Client.RTOMax.On() || rtoBound(gw) != nil {
		t.Errorf("no TCP_RTO_MAX_MS: off %v, client %+v", off, gw.Client.RTOMax)
	} else if s := off[0].String(); s != "the long legs' retransmission bound (--rto-max) off: the kernel has no TCP_RTO_MAX_MS (Linux 6.15 or later): protocol not available; long legs back off up to the kernel's 120 s through an outage, and may retransmit that long after the link returns" {
		t.Errorf("off line: %s", s)
	}
	none := tuning.NoRole.Tuning()
	if off := rtoMaxOff(&none, func() error { t.Error("probed without a bound"); return errors.New("x") }); off != nil {
		t.Errorf("no bound: %v", off)
	}
	term := tuning.Terminal.Tuning()
	term.Server.RTOMax.Stats = &tuning.RTOStats{}
	term.Server.RTOMax.Stats.Set.Add(3)
	if off := rtoMaxOff(&term, func() error { return nil }); off != nil || !term.Server.RTOMax.On() {
		t.Errorf("kernel has it: %v, %+v", off, term.Server.RTOMax)
	}
	if b := rtoBound(term); b == nil || b.Client != "off" || b.Server != "4x the handshake RTT within 2s-120s" || b.Set != 3 {
		t.Errorf("status: %+v", b)
	}
}
