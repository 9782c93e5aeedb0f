// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus"
)

// opsDescs describe what an operator's dashboards and alerts start from:
// the build, the bytes relayed so far (live connections included), the BPF
// decisions one unit per metric, and the admission limit.
type opsDescs struct {
	buildInfo, bytes                                   *prometheus.Desc
	syns, packets, steer, relaySkbs, relayAdjust, tune *prometheus.Desc
	limit, resume, full, fullTrips, shortages, ceiling *prometheus.Desc
}

func newOpsDescs() opsDescs {
	return opsDescs{
		buildInfo: prometheus.NewDesc("pepsal_build_info",
			"Always 1: the running pepsal's version, the Go version it was built with, its VCS revision and architecture.",
			[]string{"version", "goversion", "revision", "goarch"}, nil),
		bytes: prometheus.NewDesc("pepsal_relayed_bytes_total",
			"Bytes relayed so far by split connections, live ones included (read at scrape time), by direction and by who moved them: the kernel's sk_skb verdict or userspace.",
			[]string{"direction", "mover"}, nil),
		syns: prometheus.NewDesc("pepsal_classifier_syns_total",
			"SYNs opening a flow on an intercepted interface, by the classifier's decision (the counter's name in pepsal_counters): syn_diverted went to the proxy, the others were forwarded unsplit.",
			[]string{"decision"}, nil),
		packets: prometheus.NewDesc("pepsal_classifier_packets_total",
			"Packets on an intercepted interface other than a flow's opening SYN, by the classifier's decision (the counter's name in pepsal_counters).",
			[]string{"decision"}, nil),
		steer: prometheus.NewDesc("pepsal_steer_syns_total",
			"Diverted SYNs met by the sk_lookup program, by outcome (the counter's name in pepsal_counters).",
			[]string{"decision"}, nil),
		relaySkbs: prometheus.NewDesc("pepsal_relay_skbs_total",
			"Socket buffers seen by the kernel relay's sk_skb verdict, by verdict (the counter's name in pepsal_counters).",
			[]string{"verdict"}, nil),
		relayAdjust: prometheus.NewDesc("pepsal_relay_skb_adjustments_total",
			"Socket buffers the kernel relay's verdict adjusted before its verdict (an overlap trimmed, a sequence number unreadable), by adjustment.",
			[]string{"adjustment"}, nil),
		tune: prometheus.NewDesc("pepsal_tune_events_total",
			"sock_ops tuning events on the legs of split connections, by event (the counter's name in pepsal_counters).",
			[]string{"event"}, nil),
		limit: prometheus.NewDesc("pepsal_admission_limit_connections",
			"The admission limit (--max-conns): at it, new SYNs are forwarded unsplit.", nil, nil),
		resume: prometheus.NewDesc("pepsal_admission_resume_connections",
			"Below this many live connections a full daemon splits new connections again (the low-water mark).", nil, nil),
		full: prometheus.NewDesc("pepsal_admission_full",
			"1 while new SYNs are forwarded unsplit because the limit was reached or a resource ran short; else 0.", nil, nil),
		fullTrips: prometheus.NewDesc("pepsal_admission_full_trips_total",
			"Times the admission flag was set (the limit, or a resource shortage, stopped diverting).", nil, nil),
		shortages: prometheus.NewDesc("pepsal_resource_shortages_total",
			"Accepts and dials that failed for want of a local resource (file descriptors, memory, BPF map room); see process_open_fds and process_max_fds.", nil, nil),
		ceiling: prometheus.NewDesc("pepsal_admission_shortage_ceiling_connections",
			"After a resource shortage, the lower limit in force for a while (the live count it happened at); 0: none.", nil, nil),
	}
}

func (d opsDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.buildInfo, d.bytes, d.syns, d.packets, d.steer, d.relaySkbs, d.relayAdjust, d.tune,
		d.limit, d.resume, d.full, d.fullTrips, d.shortages, d.ceiling}
}

// buildLabels are pepsal_build_info's label values.
func buildLabels(version string) []string {
	rev := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	if version == "" {
		version = "unknown"
	}
	return []string{version, runtime.Version(), rev, runtime.GOARCH}
}

// CounterMetric says which metric a BPF counter of pepsal_counters
// surfaces in, one unit per metric: a SYN of a new flow, another packet,
// a diverted SYN at sk_lookup, an skb at the relay's verdict (or an
// adjustment of one), a tuning event. "" for a name no program counts.
func CounterMetric(name string) string {
	switch {
	case strings.HasPrefix(name, "syn_"):
		return "pepsal_classifier_syns_total"
	case strings.HasPrefix(name, "pkt_"), strings.HasPrefix(name, "icmp_"),
		strings.HasPrefix(name, "ack_cookie_"), strings.HasPrefix(name, "rst_cookie_"), strings.HasPrefix(name, "cookie_"):
		return "pepsal_classifier_packets_total"
	case strings.HasPrefix(name, "steer_"):
		return "pepsal_steer_syns_total"
	case name == "relay_overlap_trimmed", name == "relay_no_seq":
		return "pepsal_relay_skb_adjustments_total"
	case strings.HasPrefix(name, "relay_"):
		return "pepsal_relay_skbs_total"
	case strings.HasPrefix(name, "tune_"):
		return "pepsal_tune_events_total"
	}
	return ""
}

// collectCounters emits the BPF counters, each in its unit's metric.
func (m *Metrics) collectCounters(ch chan<- prometheus.Metric, cs []loader.Counter) {
	d := m.ops
	byName := map[string]*prometheus.Desc{
		"pepsal_classifier_syns_total": d.syns, "pepsal_classifier_packets_total": d.packets,
		"pepsal_steer_syns_total": d.steer, "pepsal_relay_skbs_total": d.relaySkbs,
		"pepsal_relay_skb_adjustments_total": d.relayAdjust, "pepsal_tune_events_total": d.tune,
	}
	for _, c := range cs {
		if desc := byName[CounterMetric(c.Name)]; desc != nil {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(c.Value), c.Name)
		}
	}
}

// collectOps emits the build, the bytes and the admission limit (of s,
// the table's totals this scrape read).
func (m *Metrics) collectOps(ch chan<- prometheus.Metric, s report.Stats) {
	d := m.ops
	ch <- prometheus.MustNewConstMetric(d.buildInfo, prometheus.GaugeValue, 1, m.build...)
	b := m.bytesSeen.monotonic(m.table.LiveBytes())
	for _, s := range []struct {
		v              uint64
		direction, who string
	}{
		{b.KernelToServer, "to_server", "kernel"},
		{b.ToServer - b.KernelToServer, "to_server", "userspace"},
		{b.KernelToClient, "to_client", "kernel"},
		{b.ToClient - b.KernelToClient, "to_client", "userspace"},
	} {
		ch <- prometheus.MustNewConstMetric(d.bytes, prometheus.CounterValue, float64(s.v), s.direction, s.who)
	}
	if s.MaxConns == 0 {
		return // no admission control: no limit to show
	}
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v)
	}
	full := 0.0
	if s.Full {
		full = 1
	}
	gauge(d.limit, float64(s.MaxConns))
	gauge(d.resume, float64(s.LowWater))
	gauge(d.full, full)
	gauge(d.ceiling, float64(s.ShortageCeiling))
	ch <- prometheus.MustNewConstMetric(d.fullTrips, prometheus.CounterValue, float64(s.FullTrips))
	ch <- prometheus.MustNewConstMetric(d.shortages, prometheus.CounterValue, float64(s.Shortages))
}

// monotonicBytes keeps the byte counters from ever going down between
// scrapes (a fall reads as a counter reset to rate()): a connection's live
// count read at one scrape may exceed what it reports at its close by the
// bytes a kernel relay's maps held when they were torn down.
type monotonicBytes struct {
	mu   sync.Mutex
	last proxy.Bytes
}

func (s *monotonicBytes) monotonic(b proxy.Bytes) proxy.Bytes {
	s.mu.Lock()
	defer s.mu.Unlock()
	b.ToServer = max(b.ToServer, s.last.ToServer)
	b.ToClient = max(b.ToClient, s.last.ToClient)
	b.KernelToServer = min(max(b.KernelToServer, s.last.KernelToServer), b.ToServer)
	b.KernelToClient = min(max(b.KernelToClient, s.last.KernelToClient), b.ToClient)
	// The userspace share must not fall either.
	if u := s.last.ToServer - s.last.KernelToServer; b.ToServer-b.KernelToServer < u {
		b.KernelToServer = b.ToServer - u
	}
	if u := s.last.ToClient - s.last.KernelToClient; b.ToClient-b.KernelToClient < u {
		b.KernelToClient = b.ToClient - u
	}
	s.last = b
	return b
}
