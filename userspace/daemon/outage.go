// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"net/netip"
	"os"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/outage"
	"github.com/pepsal/pepsal/userspace/report"
)

// StallsMap is pepsal_stalled as the daemon reads it (loader.Stalls).
type StallsMap interface {
	outage.Stalls
	Close() error
}

var _ StallsMap = (*loader.Stalls)(nil)

// watchesOutages says whether the long legs' stalls are recorded: only
// between two pepsals (a peer answers pings), with sock_ops and the map.
func (r *run) watchesOutages() bool {
	o := r.o
	return o.Peer.OutageProbe > 0 && r.k.Tuner != nil && r.k.Stalls != nil && (o.Peer.Listen != "" || o.Peer.Gateway != "")
}

// watchOutages starts the watcher of the warm paths' stalled legs (its
// raw socket needs CAP_NET_RAW: without it the legs keep their back-off,
// bounded by --rto-max where the kernel has it, and status says so).
func (r *run) watchOutages(ctx context.Context) {
	if !r.watchesOutages() {
		return
	}
	link, err := outage.ListenICMP(uint16(os.Getpid()))
	if err != nil {
		r.rtoOff = append(r.rtoOff, report.Off{Feature: "the warm paths' outage watch (--outage-probe)", Why: err.Error(),
			Instead: "long legs keep their retransmission back-off after an outage (bounded by --rto-max where the kernel has it)"})
		return
	}
	r.atEnd(func() { link.Close() })
	w := &outage.Watcher{Stalls: r.k.Stalls, Link: link, Every: r.o.Peer.OutageProbe, Silence: outage.DefaultSilence, Peer: r.peerLeg(), Log: r.log}
	r.outages = w
	go w.Run(ctx)
	r.log.Info("watching the warm paths through link outages", "probe", r.o.Peer.OutageProbe, "silence", outage.DefaultSilence)
}

// peerLeg says whether a stalled leg is a warm path: accepted on the
// gateway's listener for terminals, or dialed to the terminal's gateway.
func (r *run) peerLeg() func(loader.Stall) bool {
	var port uint16
	if r.gateway != nil {
		port = r.gateway.Port()
	}
	gw, gwErr := netip.ParseAddrPort(r.o.Peer.Gateway)
	return func(st loader.Stall) bool {
		if port != 0 && st.Local.Port() == port {
			return true
		}
		return gwErr == nil && st.Remote.Port() == gw.Port() && st.Remote.Addr() == gw.Addr().Unmap()
	}
}

// outageStats is the watch's report; nil when off.
func (r *run) outageStats() *report.OutageStats {
	if r.outages == nil {
		return nil
	}
	s := r.outages.Snapshot()
	return &report.OutageStats{ProbeMs: r.o.Peer.OutageProbe.Milliseconds(), SilenceMs: outage.DefaultSilence.Milliseconds(),
		Probes: s.Probes, Seen: s.Outages, TotalMs: s.OutageTime.Milliseconds(), LongestMs: s.Longest.Milliseconds(),
		LastMs: s.Last.Milliseconds(), LastRecoveryMs: s.LastRecovery.Milliseconds(), Kicked: s.Kicked, KickFailed: s.KickFailed,
		NotIPv4: s.NotIPv4, Probing: s.Probing, Down: s.Down}
}
