// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// buildPipeline makes the pipeline that serves the proxy's listeners, with
// the legs' initial windows set through sock_ops, the admission limit and
// the warm paths.
func (r *run) buildPipeline() error {
	o, k := r.o, r.k
	// Before anything takes the legs' tuning: the bound goes where the
	// kernel has it (settleRelay reports it with the rest).
	r.rtoOff = rtoMaxOff(&o.Tuning, tuning.ProbeRTOMax)
	lns := make([]*net.TCPListener, 0, len(r.listeners))
	for _, l := range r.listeners {
		lns = append(lns, l.ln)
	}
	routes, err := proxy.OpenHostRoutes()
	if err != nil {
		return err
	}
	r.atEnd(func() { routes.Close() })
	p := proxy.NewPipeline(lns, proxy.Config{ConnectTimeout: o.ConnectTimeout, Tuning: o.Tuning, Transparent: o.Transparent,
		Mark: o.ServerMark, Diverted: k, Tuner: k.Tuner, Dest: proxy.NewDestPolicy(o.Deny, routes), Log: r.log})
	r.pipeline = p
	r.atEnd(func() { p.Close() })
	if len(o.Deny) > 0 {
		r.log.Info("destinations refused besides this host's own", "deny", o.Deny)
	}
	if k.Tuner != nil {
		r.atEnd(func() { k.Tuner.Close() })
		watch := r.watchesOutages()
		if err := k.Tuner.SetLegs(legTuning(o.Tuning.Client, o.Tuning.ByRTT, watch), legTuning(o.Tuning.Server, o.Tuning.ByRTT, watch)); err != nil {
			return err
		}
	} else if o.Tuning.Client.InitCwnd+o.Tuning.Client.InitRwnd+o.Tuning.Server.InitCwnd+o.Tuning.Server.InitRwnd > 0 {
		return ErrNoSockOps
	} else if o.Tuning.ByRTT.On() {
		r.log.Warn("no sock_ops program (no cgroup v2 here): legs are not tuned by their round trips, Linux's defaults apply")
	}
	p.SetPipeLimit(relay.PipeLimit(o.MaxConns))
	r.admission = proxy.NewAdmission(o.MaxConns, r.setFull, r.log)
	r.admission.FDLimit = o.FDBudget.Limit
	r.admission.LimitPerClient(o.MaxConnsPerClient, r.setSourceFull)
	p.Table.SetAdmission(r.admission)
	peerCtx, stopPeers := context.WithCancel(context.Background())
	r.stopPeers = stopPeers
	r.atEnd(stopPeers)
	if err := r.startPeers(peerCtx); err != nil {
		return err
	}
	r.watchOutages(peerCtx)
	return nil
}

// setFull writes the classifier's admission flag, until a new daemon
// counts in this one's place.
func (r *run) setFull(full bool) error {
	if r.handedOver.Load() {
		return nil // the new daemon counts from now on
	}
	return r.k.SetFull(full)
}

// setSourceFull writes a client's limit mark, as setFull the flag.
func (r *run) setSourceFull(addr netip.Addr, full bool) error {
	if r.handedOver.Load() {
		return nil
	}
	return r.k.SetSourceFull(addr, full)
}

// startPeers wires warm paths into the pipeline: the gateway's listener
// (served with the proxy's, its flows dialed directly) and its sockets'
// initial windows, the terminal's pool (run until ctx ends) in front of the
// proxy listeners' upstream.
func (r *run) startPeers(ctx context.Context) error {
	p, sp, g := r.o.Peer, r.pipeline, r.gateway
	if g != nil {
		if tuner := r.k.Tuner; tuner != nil {
			if err := tuner.SetPeerPort(g.Port()); err != nil {
				return err
			}
		}
		sp.Accept(g, proxy.Direct{Dialer: sp.Dialer})
		r.log.Info("accepting warm connections from terminals", "listen", g.Addr().String(), "allow", len(p.Allow), "keys", len(p.Keys.IDs()),
			"max_waiting", g.Stats().MaxWaiting, "per_source", peer.PerSourceMax)
	}
	if p.Gateway != "" {
		own, err := p.Keys.Own()
		if err != nil {
			return fmt.Errorf("peer key: %w", err)
		}
		pool := peer.NewPool(p.Gateway, p.Pool, own.Key, sp.Dialer, sp.Log)
		pool.ID = own.ID
		r.pool = pool
		go pool.Run(ctx)
		sp.Upstream = peer.Warm{Pool: pool, Fallback: sp.Upstream}
		r.log.Info("keeping warm connections to the gateway", "gateway", p.Gateway, "pool", p.Pool, "key_id", own.ID)
	}
	return nil
}

// peerStats is the daemon's peer report (nil without warm paths).
func (r *run) peerStats() *report.PeerStats {
	if r.pool == nil && r.gateway == nil {
		return nil
	}
	var ps report.PeerStats
	if r.pool != nil {
		st := r.pool.Stats()
		ps.Pool = &st
	}
	if r.gateway != nil {
		st := r.gateway.Stats()
		ps.Gateway = &st
	}
	return &ps
}

// legTuning is what sock_ops applies to one leg: its own windows, or with
// ByRTT on and no window of its own, the window by its round trip; the long
// legs' congestion control only where the leg sets none of its own; with
// watch, a long leg's timeouts are recorded (by RTT with ByRTT).
func legTuning(l tuning.Leg, b tuning.ByRTT, watch bool) loader.LegTuning {
	lt := loader.LegTuning{InitCwnd: l.InitCwnd, InitRwnd: l.InitRwnd}
	if watch && l.Long {
		lt.WatchUs = 1
		if b.On() {
			lt.WatchUs = uint32(max(b.LongRTT.Microseconds(), 2))
		}
	}
	if !b.On() {
		return lt
	}
	lt.AutoRate = b.Rate / 1000 // bytes per millisecond
	lt.AutoMin, lt.AutoMax = b.MinWindow, b.MaxWindow
	lt.AutoLongUs = uint32(b.LongRTT.Microseconds())
	if l.CC == "" {
		for i := 0; i < len(b.LongCC) && i < len(lt.LongCc)-1; i++ {
			lt.LongCc[i] = int8(b.LongCC[i])
		}
	}
	return lt
}
