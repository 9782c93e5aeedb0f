// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics exposes the daemon to Prometheus. Everything but the connect
// histogram is read at scrape time from the connection table, the BPF
// counters map and the warm paths, the same sources as `pepsal status`, so
// the two always agree and nothing polls between scrapes.
type Metrics struct {
	table    *proxy.Table
	counters func() ([]loader.Counter, error) // the per-CPU sums of pepsal_counters
	connect  *prometheus.HistogramVec
	// Peer reads the warm paths' report (the daemon's peerStats); nil, or
	// nil returned, for a daemon without warm paths. Set before serving.
	Peer func() *report.PeerStats
	// Split reads the pipeline's totals that the table does not keep
	// (proxy.Pipeline.SplitStats); nil: none counted. Set before serving.
	Split func() report.SplitStats
	// Listen reads the listeners' backlog and the namespace's listen queue
	// counters (listenStats); nil: none. Set before serving.
	Listen func() report.ListenStats
	// Ifaces reads the followed interfaces' health (follower.health);
	// nil: none. Set before serving (metrics_ifaces.go).
	Ifaces func() []report.IfaceHealth
	// RTO reads the long legs' retransmission bound (rtoBound); nil, or
	// nil returned, without one. Set before serving.
	RTO func() *report.RTOBound
	// Outages reads the warm paths' outage watch (outageStats); nil, or
	// nil returned, without one. Set before serving.
	Outages func() *report.OutageStats

	active, accepted, closed, fallbacksBy, fallbackLive *prometheus.Desc
	localFailed, tuningSkipped, denied                  *prometheus.Desc
	clientsAtLimit, clientLimitTrips                    *prometheus.Desc
	rtoLegs                                             *prometheus.Desc

	pool    peerPoolDescs
	gateway peerGatewayDescs
	listen  listenDescs
	outage  outageDescs
	ops     opsDescs
	// build are pepsal_build_info's labels (SetVersion).
	build []string
	// bytesSeen keeps pepsal_relayed_bytes_total from going down.
	bytesSeen monotonicBytes
}

// SetVersion names the running version in pepsal_build_info.
func (m *Metrics) SetVersion(v string) { m.build = buildLabels(v) }

// listenDescs describe the listen queues (report.ListenStats).
type listenDescs struct {
	backlog, overflows, drops, cookies *prometheus.Desc
}

// peerPoolDescs describe the terminal's pool (PeerPoolStats).
type peerPoolDescs struct {
	size, conns, refills, dialFailures, taken, recycled, dead, fallbacks, backoff *prometheus.Desc
}

// peerGatewayDescs describe the gateway's listener (PeerGatewayStats).
type peerGatewayDescs struct {
	accepted, waiting, served, idleClosed, authFailures, pacedStarts, starting *prometheus.Desc
}

// NewMetrics describes the daemon's metrics; counters reads the BPF decision
// counters (loader.Attachment.Counters).
func NewMetrics(table *proxy.Table, counters func() ([]loader.Counter, error)) *Metrics {
	return &Metrics{
		table:    table,
		counters: counters,
		connect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pepsal_upstream_connect_duration_seconds",
			Help: "Time to connect to the original destination, from the dial to the established connection or the failure.",
			// From a LAN server to a geostationary path (~600 ms RTT, more
			// with SYN retransmissions), up to the default connect timeout.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, .75, 1, 1.5, 2.5, 5, 10},
		}, []string{"result"}),
		active: prometheus.NewDesc("pepsal_connections_active",
			"Split connections open now.", nil, nil),
		accepted: prometheus.NewDesc("pepsal_connections_accepted_total",
			"Diverted connections accepted by the proxy.", nil, nil),
		closed: prometheus.NewDesc("pepsal_connections_closed_total",
			"Split connections ended, by outcome.", []string{"outcome"}, nil),
		ops:   newOpsDescs(),
		build: buildLabels(""),
		fallbacksBy: prometheus.NewDesc("pepsal_relay_fallbacks_total",
			"Closed connections that were relayed in userspace although the kernel relay was asked for, by reason class.", []string{"reason"}, nil),
		fallbackLive: prometheus.NewDesc("pepsal_relay_fallback_connections",
			"Open connections relayed in userspace although the kernel relay was asked for, by reason class.", []string{"reason"}, nil),
		localFailed: prometheus.NewDesc("pepsal_local_failures_total",
			"Connections reset because the router ran out of a local resource (file descriptors, memory, ports) while accepting or dialing: not the server's fault.", nil, nil),
		tuningSkipped: prometheus.NewDesc("pepsal_upstream_tuning_skipped_total",
			"Upstream sockets dialed without their sock_ops tuning because pepsal_upstream was full.", nil, nil),
		denied: prometheus.NewDesc("pepsal_connections_denied_total",
			"Connections reset because the destination policy refused their destination (this host, loopback, link-local, multicast, broadcast, --deny), by reason: nothing was dialed.", []string{"reason"}, nil),
		listen: newListenDescs(),
		outage: newOutageDescs(),
		rtoLegs: prometheus.NewDesc("pepsal_rto_bound_legs_total",
			"Legs the long legs' retransmission bound (--rto-max) was decided for, by decision: set, short_leg and no_rtt (--role auto: left alone), failed (the kernel refused it).", []string{"decision"}, nil),
		clientsAtLimit: prometheus.NewDesc("pepsal_clients_at_limit",
			"Client addresses holding --max-conns-per-client split connections now: their new connections are forwarded unsplit (counted as the syn_bypass_source decision).", nil, nil),
		clientLimitTrips: prometheus.NewDesc("pepsal_client_limit_trips_total",
			"Times a client address reached --max-conns-per-client.", nil, nil),
		pool: peerPoolDescs{
			size: prometheus.NewDesc("pepsal_peer_pool_size",
				"Warm connections the terminal keeps to its gateway (--peer-pool).", nil, nil),
			conns: prometheus.NewDesc("pepsal_peer_pool_connections",
				"The terminal's warm connections now, by state: idle (ready for a flow), in_use (carrying one), dialing.", []string{"state"}, nil),
			refills: prometheus.NewDesc("pepsal_peer_pool_refills_total",
				"Warm connections the terminal opened and the gateway greeted.", nil, nil),
			dialFailures: prometheus.NewDesc("pepsal_peer_pool_dial_failures_total",
				"Dials to the gateway that failed or met no pepsal gateway.", nil, nil),
			taken: prometheus.NewDesc("pepsal_peer_pool_taken_total",
				"Client flows that rode a warm connection.", nil, nil),
			recycled: prometheus.NewDesc("pepsal_peer_pool_recycled_total",
				"Idle warm connections closed at their maximum age.", nil, nil),
			dead: prometheus.NewDesc("pepsal_peer_pool_dead_total",
				"Warm connections found closed by the gateway when taken.", nil, nil),
			fallbacks: prometheus.NewDesc("pepsal_peer_pool_fallbacks_total",
				"Client flows sent the fast-open way instead of a warm connection, by reason: the pool was empty (a burst) or the gateway was down (backing off).", []string{"reason"}, nil),
			backoff: prometheus.NewDesc("pepsal_peer_pool_backoff_seconds",
				"Wait before the next dial to the gateway after failed dials; 0 when the last dial succeeded.", nil, nil),
		},
		gateway: peerGatewayDescs{
			accepted: prometheus.NewDesc("pepsal_peer_gateway_accepted_total",
				"Warm connections the gateway accepted from terminals.", nil, nil),
			waiting: prometheus.NewDesc("pepsal_peer_gateway_waiting",
				"Warm connections held at the gateway now before their flows: authenticating, or idle in the terminals' pools.", nil, nil),
			served: prometheus.NewDesc("pepsal_peer_gateway_served_total",
				"Headers the gateway accepted on warm connections: client flows relayed.", nil, nil),
			idleClosed: prometheus.NewDesc("pepsal_peer_gateway_idle_closed_total",
				"Warm connections closed before a header: by the terminal, or idle past the limit.", nil, nil),
			authFailures: prometheus.NewDesc("pepsal_peer_gateway_auth_failures_total",
				"Warm connections the gateway refused, by reason.", []string{"reason"}, nil),
			pacedStarts: prometheus.NewDesc("pepsal_peer_gateway_paced_starts_total",
				"Flows that started with others toward the same terminal and were paced to a share of its link for their first round trips.", nil, nil),
			starting: prometheus.NewDesc("pepsal_peer_gateway_starting",
				"Flows toward terminals in their first round trips now.", nil, nil),
		},
	}
}

// newListenDescs describes the listen queues (report.ListenStats).
func newListenDescs() listenDescs {
	return listenDescs{
		backlog: prometheus.NewDesc("pepsal_listen_backlog",
			"The proxy listeners' backlog, their SYN and accept queue length: an eighth of --max-conns within 512..65535, capped by net.core.somaxconn.", nil, nil),
		overflows: prometheus.NewDesc("pepsal_tcp_listen_overflows_total",
			"SYNs and handshake ACKs dropped because an accept queue was full (TcpExt ListenOverflows): every listener of the network namespace, not only pepsal's.", nil, nil),
		drops: prometheus.NewDesc("pepsal_tcp_listen_drops_total",
			"Packets dropped at a listener, overflows included (TcpExt ListenDrops): every listener of the network namespace, not only pepsal's.", nil, nil),
		cookies: prometheus.NewDesc("pepsal_tcp_syncookies_total",
			"SYN cookies sent (a full SYN queue, or tcp_syncookies=2), received valid in an ACK, and failed (TcpExt Syncookies*): every listener of the network namespace, not only pepsal's.", []string{"event"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	p, g := m.pool, m.gateway
	for _, d := range []*prometheus.Desc{m.active, m.accepted, m.closed, m.fallbacksBy, m.fallbackLive, m.localFailed, m.tuningSkipped, m.denied, m.clientsAtLimit, m.clientLimitTrips, m.rtoLegs,
		p.size, p.conns, p.refills, p.dialFailures, p.taken, p.recycled, p.dead, p.fallbacks, p.backoff,
		g.accepted, g.waiting, g.served, g.idleClosed, g.authFailures, g.pacedStarts, g.starting,
		m.listen.backlog, m.listen.overflows, m.listen.drops, m.listen.cookies} {
		ch <- d
	}
	for _, d := range m.ops.all() {
		ch <- d
	}
	for _, d := range m.outage.all() {
		ch <- d
	}
	m.connect.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.table.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(m.active, float64(s.Active))
	counter(m.accepted, s.Accepted)
	counter(m.closed, s.Completed, conn.Completed.String())
	counter(m.closed, s.Reset, conn.WasReset.String())
	counter(m.closed, s.UpstreamFailed, conn.UpstreamFailed.String())
	counter(m.closed, s.LoopRefused, conn.LoopRefused.String())
	counter(m.closed, s.DestDenied, conn.DestDenied.String())
	for _, reason := range conn.DenyReasons() {
		counter(m.denied, s.DestDeniedByReason[reason.String()], reason.String())
	}
	gauge(m.clientsAtLimit, float64(s.ClientsAtLimit))
	counter(m.clientLimitTrips, s.ClientLimitTrips)
	var split report.SplitStats
	if m.Split != nil {
		split = m.Split()
	}
	counter(m.localFailed, split.LocalFailed)
	counter(m.tuningSkipped, split.UpstreamTuningSkipped)
	if m.RTO != nil {
		if b := m.RTO(); b != nil {
			counter(m.rtoLegs, b.Set, "set")
			counter(m.rtoLegs, b.ShortLeg, "short_leg")
			counter(m.rtoLegs, b.NoRTT, "no_rtt")
			counter(m.rtoLegs, b.Failed, "failed")
		}
	}
	if m.Outages != nil {
		m.outage.collect(ch, m.Outages())
	}
	// Every reason, 0 included, so that a dashboard sees the series before
	// the first fallback.
	for _, reason := range conn.FallbackReasons() {
		counter(m.fallbacksBy, s.FallbackByReason[reason.String()], reason.String())
	}

	live := m.table.FallbacksLive()
	for _, reason := range conn.FallbackReasons() {
		gauge(m.fallbackLive, float64(live[reason]), reason.String())
	}

	if cs, err := m.counters(); err != nil {
		// The rest of the scrape stays useful; the handler logs this.
		ch <- prometheus.NewInvalidMetric(m.ops.syns, err)
	} else {
		m.collectCounters(ch, cs)
	}
	m.collectOps(ch, s)
	m.connect.Collect(ch)
	m.collectPeer(gauge, counter)
	m.collectListen(ch, gauge, counter)
}

// collectListen emits the listen queues; counters the daemon could not
// read are invalid metrics (the handler logs them), not zeros.
func (m *Metrics) collectListen(ch chan<- prometheus.Metric, gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string)) {
	if m.Listen == nil {
		return
	}
	s, d := m.Listen(), m.listen
	gauge(d.backlog, float64(s.Backlog))
	if s.Unreadable != "" {
		ch <- prometheus.NewInvalidMetric(d.overflows, errors.New(s.Unreadable))
		return
	}
	counter(d.overflows, s.Overflows)
	counter(d.drops, s.Drops)
	counter(d.cookies, s.CookiesSent, "sent")
	counter(d.cookies, s.CookiesRecv, "received")
	counter(d.cookies, s.CookiesFailed, "failed")
}

// collectPeer emits the terminal's pool and the gateway's listener, each only
// where the daemon has one: a series at 0 would say a pool exists.
func (m *Metrics) collectPeer(gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string)) {
	if m.Peer == nil {
		return
	}
	ps := m.Peer()
	if ps == nil {
		return
	}
	if s, d := ps.Pool, m.pool; s != nil {
		gauge(d.size, float64(s.Size))
		gauge(d.conns, float64(s.Idle), "idle")
		gauge(d.conns, float64(s.InUse), "in_use")
		gauge(d.conns, float64(s.Dialing), "dialing")
		counter(d.refills, s.Refills)
		counter(d.dialFailures, s.DialFailures)
		counter(d.taken, s.Taken)
		counter(d.recycled, s.Recycled)
		counter(d.dead, s.Dead)
		counter(d.fallbacks, s.FallbackEmpty, "empty")
		counter(d.fallbacks, s.FallbackDown, "down")
		gauge(d.backoff, float64(s.BackoffMS)/1000)
	}
	if s, d := ps.Gateway, m.gateway; s != nil {
		counter(d.accepted, s.Accepted)
		gauge(d.waiting, float64(s.Waiting))
		counter(d.served, s.Served)
		counter(d.idleClosed, s.IdleClosed)
		// Every reason, 0 included, so a dashboard sees the series before
		// the first refusal.
		for _, r := range report.AuthReasons {
			counter(d.authFailures, s.Refused[r], r)
		}
		counter(d.pacedStarts, s.PacedStarts)
		gauge(d.starting, float64(s.Starting))
	}
}

// ObserveConnect records one upstream connect.
func (m *Metrics) ObserveConnect(d time.Duration, err error) {
	result := "success"
	if err != nil {
		result = "failure"
	}
	m.connect.WithLabelValues(result).Observe(d.Seconds())
}

// Handler serves m, with the Go runtime and process collectors, from a
// registry of its own: nothing another package registers globally leaks in.
func (m *Metrics) Handler(log *slog.Logger) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		m,
		newIfaceCollector(m.Ifaces),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrintln{log},
		ErrorHandling: promhttp.ContinueOnError, // serve what could be read
	}), nil
}

// slogPrintln is the logger promhttp wants; a MultiError becomes one line.
type slogPrintln struct{ log *slog.Logger }

func (l slogPrintln) Println(v ...any) {
	var parts []string
	for _, x := range v {
		var multi prometheus.MultiError
		if err, ok := x.(error); ok && errors.As(err, &multi) {
			for _, e := range multi {
				parts = append(parts, e.Error())
			}
			continue
		}
		parts = append(parts, fmt.Sprint(x))
	}
	l.log.Warn("metrics", "err", strings.Join(parts, "; "))
}
