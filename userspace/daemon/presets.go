// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/pepsal/pepsal/userspace/tuning"
)

// Presets says in words what the legs are tuned to (the role's preset and
// the flags over it), one line per leg and one for fast open, for status.
func Presets(t tuning.Tuning) []string {
	out := []string{"client leg: " + legText(t.Client, t.ByRTT), "server leg: " + legText(t.Server, t.ByRTT)}
	var fo []string
	if t.FastOpen.Accept {
		fo = append(fo, "accepted")
	}
	if t.FastOpen.Dial {
		fo = append(fo, fmt.Sprintf("dialed (waits %s for the request)", t.FastOpen.Wait))
	}
	if len(fo) == 0 {
		fo = append(fo, "off")
	}
	return append(out, "fast open: "+strings.Join(fo, ", "))
}

// legText is one leg's settings that differ from Linux's defaults; the
// keepalive and user timeout, the same on both legs whatever the role, are
// left out.
func legText(l tuning.Leg, b tuning.ByRTT) string {
	var parts []string
	if l.CC != "" {
		parts = append(parts, l.CC)
	} else if b.On() && b.LongCC != "" {
		parts = append(parts, fmt.Sprintf("%s if its handshake RTT is %s or more", b.LongCC, b.LongRTT))
	}
	if l.InitCwnd > 0 {
		parts = append(parts, fmt.Sprintf("initcwnd %d", l.InitCwnd))
	} else if b.On() {
		parts = append(parts, fmt.Sprintf("initcwnd one BDP of %s at its handshake RTT (%d-%d segments)", rateText(b.Rate), b.MinWindow, b.MaxWindow))
	}
	if l.InitRwnd > 0 {
		parts = append(parts, fmt.Sprintf("initrwnd %d", l.InitRwnd))
	}
	if l.SndBuf > 0 {
		parts = append(parts, "sndbuf "+sizeText(l.SndBuf))
	}
	if l.RcvBuf > 0 {
		parts = append(parts, "rcvbuf "+sizeText(l.RcvBuf))
	}
	if l.QuickAck {
		parts = append(parts, "quickack")
	}
	if l.MSS > 0 {
		parts = append(parts, fmt.Sprintf("mss %d", l.MSS))
	}
	if l.NoDelay != nil && !*l.NoDelay {
		parts = append(parts, "nodelay off")
	}
	if l.RTOMax.On() {
		parts = append(parts, "rto-max "+l.RTOMax.String())
	}
	if len(parts) == 0 {
		return "Linux defaults"
	}
	return strings.Join(parts, ", ")
}

// rateText is bytes per second as bits: 20 Mbit/s.
func rateText(bytesPerSec uint32) string {
	bits := float64(bytesPerSec) * 8
	switch {
	case bits >= 1e9:
		return fmt.Sprintf("%g Gbit/s", bits/1e9)
	case bits >= 1e6:
		return fmt.Sprintf("%g Mbit/s", bits/1e6)
	}
	return fmt.Sprintf("%g kbit/s", bits/1e3)
}

func prefixTexts(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// sizeText is a buffer size as the flags take it: 16MiB, 512KiB, 1000.
func sizeText(n int) string {
	switch {
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprint(n)
}
