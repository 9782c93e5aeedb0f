// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// rtoMaxOff takes the retransmission bound off the legs where the kernel
// has no TCP_RTO_MAX_MS (before Linux 6.15), and says so: pepsal runs on
// without it, its long legs back off as the kernel's do.
func rtoMaxOff(t *tuning.Tuning, probe func() error) []report.Off {
	if !t.Client.RTOMax.On() && !t.Server.RTOMax.On() {
		return nil
	}
	err := probe()
	if err == nil {
		return nil
	}
	t.Client.RTOMax, t.Server.RTOMax = tuning.RTOMax{}, tuning.RTOMax{}
	return []report.Off{{Feature: "the long legs' retransmission bound (--rto-max)", Why: err.Error(),
		Instead: "long legs back off up to the kernel's 120 s through an outage, and may retransmit that long after the link returns"}}
}

// rtoBound is the bound in force on each leg, and what it decided, for
// status; nil when no leg has one.
func rtoBound(t tuning.Tuning) *report.RTOBound {
	if !t.Client.RTOMax.On() && !t.Server.RTOMax.On() {
		return nil
	}
	b := &report.RTOBound{Client: t.Client.RTOMax.String(), Server: t.Server.RTOMax.String()}
	for _, s := range []*tuning.RTOStats{t.Client.RTOMax.Stats, t.Server.RTOMax.Stats} {
		if s != nil {
			b.Set, b.ShortLeg, b.NoRTT, b.Failed = s.Set.Load(), s.Short.Load(), s.NoRTT.Load(), s.Failed.Load()
			break // both legs count into one
		}
	}
	return b
}
