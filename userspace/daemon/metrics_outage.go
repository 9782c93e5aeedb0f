// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus"
)

// outageDescs describe the warm paths' outage watch (report.OutageStats).
type outageDescs struct {
	seen, seconds, longest, last, recovery, probes, kicked, probing *prometheus.Desc
}

func newOutageDescs() outageDescs {
	return outageDescs{
		seen: prometheus.NewDesc("pepsal_link_outages_total",
			"Link outages toward the other pepsal that ended: it was silent for 2 s while legs toward it were stalled, then answered.", nil, nil),
		seconds: prometheus.NewDesc("pepsal_link_outage_seconds_total",
			"The outages' lengths, summed: from its last answer before to its first after.", nil, nil),
		longest: prometheus.NewDesc("pepsal_link_outage_longest_seconds",
			"The longest outage since start.", nil, nil),
		last: prometheus.NewDesc("pepsal_link_outage_last_seconds",
			"The latest outage's length.", nil, nil),
		recovery: prometheus.NewDesc("pepsal_link_outage_recovery_seconds",
			"After the latest outage, the round trip of the probe that found the link back: the stalled legs were made to retransmit at most this long after the link returned.", nil, nil),
		probes: prometheus.NewDesc("pepsal_link_probes_total",
			"Pings sent to the other pepsal while legs toward it were stalled.", nil, nil),
		kicked: prometheus.NewDesc("pepsal_stalled_legs_kicked_total",
			"Stalled long legs told to retransmit when the link returned (RFC 6069 host unreachables to this host), by result: kicked, failed (the kernel refused the error).", []string{"result"}, nil),
		probing: prometheus.NewDesc("pepsal_link_remotes_probed",
			"Pepsals probed now because legs toward them are stalled, by state: answering, silent (an outage).", []string{"state"}, nil),
	}
}

func (d outageDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.seen, d.seconds, d.longest, d.last, d.recovery, d.probes, d.kicked, d.probing}
}

// collect sends the watch's metrics; none when it is off.
func (d outageDescs) collect(ch chan<- prometheus.Metric, s *report.OutageStats) {
	if s == nil {
		return
	}
	c := func(desc *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, t, v, labels...)
	}
	c(d.seen, prometheus.CounterValue, float64(s.Seen))
	c(d.seconds, prometheus.CounterValue, float64(s.TotalMs)/1000)
	c(d.longest, prometheus.GaugeValue, float64(s.LongestMs)/1000)
	c(d.last, prometheus.GaugeValue, float64(s.LastMs)/1000)
	c(d.recovery, prometheus.GaugeValue, float64(s.LastRecoveryMs)/1000)
	c(d.probes, prometheus.CounterValue, float64(s.Probes))
	c(d.kicked, prometheus.CounterValue, float64(s.Kicked), "kicked")
	c(d.kicked, prometheus.CounterValue, float64(s.KickFailed), "failed")
	c(d.probing, prometheus.GaugeValue, float64(s.Probing-s.Down), "answering")
	c(d.probing, prometheus.GaugeValue, float64(s.Down), "silent")
}
