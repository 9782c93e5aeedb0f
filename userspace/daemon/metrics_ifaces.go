// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus"
)

// ifaceCollector exposes the health of the interfaces the daemon follows
// by name (follower.health), one series per interface: an alert on
// pepsal_interface_attached == 0 catches an interface that went and did
// not come back, which splits nothing.
type ifaceCollector struct {
	health                       func() []report.IfaceHealth // nil: no interface followed
	attached, losses, reattached *prometheus.Desc
}

func newIfaceCollector(health func() []report.IfaceHealth) *ifaceCollector {
	label := []string{"iface"}
	return &ifaceCollector{
		health: health,
		attached: prometheus.NewDesc("pepsal_interface_attached",
			"1 when the classifier is on the interface of this name (--iface, --return-iface), so its new connections are split; 0 while there is no such interface or the classifier could not be attached.", label, nil),
		losses: prometheus.NewDesc("pepsal_interface_losses_total",
			"Times the interface of this name went (deleted, or its classifier removed).", label, nil),
		reattached: prometheus.NewDesc("pepsal_interface_reattached_total",
			"Times the daemon put the classifier back on an interface of this name created again.", label, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ifaceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.attached
	ch <- c.losses
	ch <- c.reattached
}

// Collect implements prometheus.Collector.
func (c *ifaceCollector) Collect(ch chan<- prometheus.Metric) {
	if c.health == nil {
		return
	}
	for _, h := range c.health() {
		up := 0.0
		if h.Attached {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.attached, prometheus.GaugeValue, up, h.Name)
		ch <- prometheus.MustNewConstMetric(c.losses, prometheus.CounterValue, float64(h.Losses), h.Name)
		ch <- prometheus.MustNewConstMetric(c.reattached, prometheus.CounterValue, float64(h.Reattached), h.Name)
	}
}
