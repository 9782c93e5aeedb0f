// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsCollect: what a scrape says is what the table and the counters
// hold, under names that pass the Prometheus linter.
func TestMetricsCollect(t *testing.T) {
	table := proxy.NewTable()
	client, server := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.1.1:80")
	done := table.Add(client, server, conn.Kernel)
	done.SetMoved(conn.Moved{ToServer: 100, ToClient: 1000, KernelToServer: 60, KernelToClient: 900})
	table.Remove(done, conn.Completed)
	fell := table.Add(client, server, conn.Kernel)
	fell.SetRelay(nettest.RelayState(t, "userspace: client closed before insert"))
	fell.AddMoved(7, 3)
	table.Remove(fell, conn.WasReset)
	table.Remove(table.Add(client, server, conn.Splice), conn.UpstreamFailed)
	table.Deny(table.Add(client, server, conn.Splice), conn.LinkLocal)
	live := table.Add(client, server, conn.Kernel)
	live.SetRelay(nettest.RelayState(t, "userspace: first bytes not read whole"))

	m := NewMetrics(table, func() ([]loader.Counter, error) {
		return []loader.Counter{{Name: "syn_diverted", Value: 4}, {Name: "relay_redirected", Value: 9}}, nil
	})
	m.ObserveConnect(20*time.Millisecond, nil)
	m.ObserveConnect(3*time.Second, errors.New("refused"))
	var localFailed, tuningSkipped atomic.Uint64 // what a pipeline and its dialer count
	m.Split = func() report.SplitStats {
		return report.SplitStats{LocalFailed: localFailed.Load(), UpstreamTuningSkipped: tuningSkipped.Load()}
	}
	m.RTO = func() *report.RTOBound { return &report.RTOBound{Set: 5, ShortLeg: 2} }
	split := m.Split()
	localFailed.Add(2)
	tuningSkipped.Add(1)

	want := fmt.Sprintf(`
# HELP pepsal_connections_active Split connections open now.
# TYPE pepsal_connections_active gauge
pepsal_connections_active 1
# HELP pepsal_connections_accepted_total Diverted connections accepted by the proxy.
# TYPE pepsal_connections_accepted_total counter
pepsal_connections_accepted_total 5
# HELP pepsal_connections_closed_total Split connections ended, by outcome.
# TYPE pepsal_connections_closed_total counter
pepsal_connections_closed_total{outcome="completed"} 1
pepsal_connections_closed_total{outcome="dest_denied"} 1
pepsal_connections_closed_total{outcome="loop_refused"} 0
pepsal_connections_closed_total{outcome="reset"} 1
pepsal_connections_closed_total{outcome="upstream_failed"} 1
# HELP pepsal_relayed_bytes_total Bytes relayed so far by split connections, live ones included (read at scrape time), by direction and by who moved them: the kernel's sk_skb verdict or userspace.
# TYPE pepsal_relayed_bytes_total counter
pepsal_relayed_bytes_total{direction="to_client",mover="kernel"} 900
pepsal_relayed_bytes_total{direction="to_client",mover="userspace"} 103
pepsal_relayed_bytes_total{direction="to_server",mover="kernel"} 60
pepsal_relayed_bytes_total{direction="to_server",mover="userspace"} 47
# HELP pepsal_classifier_syns_total SYNs opening a flow on an intercepted interface, by the classifier's decision (the counter's name in pepsal_counters): syn_diverted went to the proxy, the others were forwarded unsplit.
# TYPE pepsal_classifier_syns_total counter
pepsal_classifier_syns_total{decision="syn_diverted"} 4
# HELP pepsal_relay_skbs_total Socket buffers seen by the kernel relay's sk_skb verdict, by verdict (the counter's name in pepsal_counters).
# TYPE pepsal_relay_skbs_total counter
pepsal_relay_skbs_total{verdict="relay_redirected"} 9
# HELP pepsal_relay_fallbacks_total Closed connections that were relayed in userspace although the kernel relay was asked for, by reason class.
# TYPE pepsal_relay_fallbacks_total counter
pepsal_relay_fallbacks_total{reason="closed_before_insert"} 1
pepsal_relay_fallbacks_total{reason="first_bytes_partial"} 0
pepsal_relay_fallbacks_total{reason="insert_failed"} 0
pepsal_relay_fallbacks_total{reason="setup_failed"} 0
# HELP pepsal_relay_fallback_connections Open connections relayed in userspace although the kernel relay was asked for, by reason class.
# TYPE pepsal_relay_fallback_connections gauge
pepsal_relay_fallback_connections{reason="closed_before_insert"} 0
pepsal_relay_fallback_connections{reason="first_bytes_partial"} 1
pepsal_relay_fallback_connections{reason="insert_failed"} 0
pepsal_relay_fallback_connections{reason="setup_failed"} 0
# HELP pepsal_local_failures_total Connections reset because the router ran out of a local resource (file descriptors, memory, ports) while accepting or dialing: not the server's fault.
# TYPE pepsal_local_failures_total counter
pepsal_local_failures_total %d
# HELP pepsal_upstream_tuning_skipped_total Upstream sockets dialed without their sock_ops tuning because pepsal_upstream was full.
# TYPE pepsal_upstream_tuning_skipped_total counter
pepsal_upstream_tuning_skipped_total %d
# HELP pepsal_connections_denied_total Connections reset because the destination policy refused their destination (this host, loopback, link-local, multicast, broadcast, --deny), by reason: nothing was dialed.
# TYPE pepsal_connections_denied_total counter
pepsal_connections_denied_total{reason="broadcast"} 0
pepsal_connections_denied_total{reason="deny_prefix"} 0
pepsal_connections_denied_total{reason="link_local"} 1
pepsal_connections_denied_total{reason="loopback"} 0
pepsal_connections_denied_total{reason="multicast"} 0
pepsal_connections_denied_total{reason="own_address"} 0
pepsal_connections_denied_total{reason="route_lookup_failed"} 0
pepsal_connections_denied_total{reason="unspecified"} 0
# HELP pepsal_rto_bound_legs_total Legs the long legs' retransmission bound (--rto-max) was decided for, by decision: set, short_leg and no_rtt (--role auto: left alone), failed (the kernel refused it).
# TYPE pepsal_rto_bound_legs_total counter
pepsal_rto_bound_legs_total{decision="failed"} 0
pepsal_rto_bound_legs_total{decision="no_rtt"} 0
pepsal_rto_bound_legs_total{decision="set"} 5
pepsal_rto_bound_legs_total{decision="short_leg"} 2
`, split.LocalFailed+2, split.UpstreamTuningSkipped+1)
	names := []string{"pepsal_connections_active", "pepsal_connections_accepted_total", "pepsal_connections_closed_total",
		"pepsal_relayed_bytes_total", "pepsal_classifier_syns_total", "pepsal_relay_skbs_total",
		"pepsal_relay_fallbacks_total", "pepsal_relay_fallback_connections", "pepsal_local_failures_total", "pepsal_upstream_tuning_skipped_total",
		"pepsal_connections_denied_total", "pepsal_rto_bound_legs_total"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m, "pepsal_upstream_connect_duration_seconds"); n != 2 {
		t.Errorf("connect histogram: %d series, want success and failure", n)
	}
	lintMetrics(t, m)
}

// lintMetrics fails t on every problem Prometheus's linter finds in m.
func lintMetrics(t *testing.T, m *Metrics) {
	t.Helper()
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestMetricsCountersUnreadable: a failing BPF map read loses its family,
// not the scrape.
func TestMetricsCountersUnreadable(t *testing.T) {
	m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) { return nil, errors.New("map gone") })
	h, err := m.Handler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "pepsal_connections_active 0") || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_open_fds") {
		t.Errorf("status %d, body:\n%s", rec.Code, body)
	}
	if strings.Contains(body, "pepsal_classifier_syns_total{") {
		t.Errorf("decisions served from a failed read:\n%s", body)
	}
}

// TestMetricsPeer: a daemon with both warm-path ends exports what its peer
// report holds, read at each scrape, under names that pass the linter.
func TestMetricsPeer(t *testing.T) {
	ps := report.PeerStats{
		Pool: &report.PeerPoolStats{Gateway: "10.0.0.2:7700", Size: 8, Idle: 5, InUse: 2, Dialing: 1, Refills: 40, DialFailures: 3,
			Taken: 31, Recycled: 4, Dead: 2, FallbackEmpty: 6, FallbackDown: 7, BackoffMS: 2500, LastError: "connection refused"},
		Gateway: &report.PeerGatewayStats{Listen: "10.0.0.2:7700", Accepted: 50, Waiting: 9, Served: 33, IdleClosed: 5,
			Refused: map[string]uint64{report.AuthBadMAC: 2, report.AuthOverload: 1}, PacedStarts: 12, Starting: 3},
	}
	m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) { return nil, nil })
	m.Peer = func() *report.PeerStats { return &ps }

	want := `
# HELP pepsal_peer_pool_size Warm connections the terminal keeps to its gateway (--peer-pool).
# TYPE pepsal_peer_pool_size gauge
pepsal_peer_pool_size 8
# HELP pepsal_peer_pool_connections The terminal's warm connections now, by state: idle (ready for a flow), in_use (carrying one), dialing.
# TYPE pepsal_peer_pool_connections gauge
pepsal_peer_pool_connections{state="dialing"} 1
pepsal_peer_pool_connections{state="idle"} 5
pepsal_peer_pool_connections{state="in_use"} 2
# HELP pepsal_peer_pool_refills_total Warm connections the terminal opened and the gateway greeted.
# TYPE pepsal_peer_pool_refills_total counter
pepsal_peer_pool_refills_total 40
# HELP pepsal_peer_pool_dial_failures_total Dials to the gateway that failed or met no pepsal gateway.
# TYPE pepsal_peer_pool_dial_failures_total counter
pepsal_peer_pool_dial_failures_total 3
# HELP pepsal_peer_pool_taken_total Client flows that rode a warm connection.
# TYPE pepsal_peer_pool_taken_total counter
pepsal_peer_pool_taken_total 31
# HELP pepsal_peer_pool_recycled_total Idle warm connections closed at their maximum age.
# TYPE pepsal_peer_pool_recycled_total counter
pepsal_peer_pool_recycled_total 4
# HELP pepsal_peer_pool_dead_total Warm connections found closed by the gateway when taken.
# TYPE pepsal_peer_pool_dead_total counter
pepsal_peer_pool_dead_total 2
# HELP pepsal_peer_pool_fallbacks_total Client flows sent the fast-open way instead of a warm connection, by reason: the pool was empty (a burst) or the gateway was down (backing off).
# TYPE pepsal_peer_pool_fallbacks_total counter
pepsal_peer_pool_fallbacks_total{reason="down"} 7
pepsal_peer_pool_fallbacks_total{reason="empty"} 6
# HELP pepsal_peer_pool_backoff_seconds Wait before the next dial to the gateway after failed dials; 0 when the last dial succeeded.
# TYPE pepsal_peer_pool_backoff_seconds gauge
pepsal_peer_pool_backoff_seconds 2.5
# HELP pepsal_peer_gateway_accepted_total Warm connections the gateway accepted from terminals.
# TYPE pepsal_peer_gateway_accepted_total counter
pepsal_peer_gateway_accepted_total 50
# HELP pepsal_peer_gateway_waiting Warm connections held at the gateway now before their flows: authenticating, or idle in the terminals' pools.
# TYPE pepsal_peer_gateway_waiting gauge
pepsal_peer_gateway_waiting 9
# HELP pepsal_peer_gateway_served_total Headers the gateway accepted on warm connections: client flows relayed.
# TYPE pepsal_peer_gateway_served_total counter
pepsal_peer_gateway_served_total 33
# HELP pepsal_peer_gateway_idle_closed_total Warm connections closed before a header: by the terminal, or idle past the limit.
# TYPE pepsal_peer_gateway_idle_closed_total counter
pepsal_peer_gateway_idle_closed_total 5
# HELP pepsal_peer_gateway_auth_failures_total Warm connections the gateway refused, by reason.
# TYPE pepsal_peer_gateway_auth_failures_total counter
pepsal_peer_gateway_auth_failures_total{reason="auth_deadline"} 0
pepsal_peer_gateway_auth_failures_total{reason="bad_mac"} 2
pepsal_peer_gateway_auth_failures_total{reason="client_not_allowed"} 0
pepsal_peer_gateway_auth_failures_total{reason="closed_before_auth"} 0
pepsal_peer_gateway_auth_failures_total{reason="full"} 0
pepsal_peer_gateway_auth_failures_total{reason="garbage"} 0
pepsal_peer_gateway_auth_failures_total{reason="incomplete"} 0
pepsal_peer_gateway_auth_failures_total{reason="not_allowed"} 0
pepsal_peer_gateway_auth_failures_total{reason="overload"} 1
pepsal_peer_gateway_auth_failures_total{reason="per_source"} 0
pepsal_peer_gateway_auth_failures_total{reason="replay"} 0
pepsal_peer_gateway_auth_failures_total{reason="revoked"} 0
pepsal_peer_gateway_auth_failures_total{reason="unknown_id"} 0
pepsal_peer_gateway_auth_failures_total{reason="version"} 0
# HELP pepsal_peer_gateway_paced_starts_total Flows that started with others toward the same terminal and were paced to a share of its link for their first round trips.
# TYPE pepsal_peer_gateway_paced_starts_total counter
pepsal_peer_gateway_paced_starts_total 12
# HELP pepsal_peer_gateway_starting Flows toward terminals in their first round trips now.
# TYPE pepsal_peer_gateway_starting gauge
pepsal_peer_gateway_starting 3
`
	names := []string{"pepsal_peer_pool_size", "pepsal_peer_pool_connections", "pepsal_peer_pool_refills_total",
		"pepsal_peer_pool_dial_failures_total", "pepsal_peer_pool_taken_total", "pepsal_peer_pool_recycled_total",
		"pepsal_peer_pool_dead_total", "pepsal_peer_pool_fallbacks_total", "pepsal_peer_pool_backoff_seconds",
		"pepsal_peer_gateway_accepted_total", "pepsal_peer_gateway_waiting", "pepsal_peer_gateway_served_total",
		"pepsal_peer_gateway_idle_closed_total", "pepsal_peer_gateway_auth_failures_total",
		"pepsal_peer_gateway_paced_starts_total", "pepsal_peer_gateway_starting"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// Every peer family the scrape has is one the test compared.
	got := peerSeries(t, m)
	for key := range got {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(key, n+"{") }) {
			t.Errorf("%s: not in the expected exposition", key)
		}
	}
	lintMetrics(t, m)

	// Read at scrape time: the next scrape sees the report as it is then.
	ps.Pool.Taken, ps.Gateway.Served = 32, 34
	got = peerSeries(t, m)
	if got["pepsal_peer_pool_taken_total{}"] != 32 || got["pepsal_peer_gateway_served_total{}"] != 34 {
		t.Errorf("second scrape: taken %v, served %v; want 32 and 34", got["pepsal_peer_pool_taken_total{}"], got["pepsal_peer_gateway_served_total{}"])
	}
}

// TestMetricsPeerAbsent: an end the daemon does not have exports no series
// (a pool at 0 would read as a pool that never worked).
func TestMetricsPeerAbsent(t *testing.T) {
	pool := &report.PeerPoolStats{Size: 2, Idle: 2, Refills: 2}
	gateway := &report.PeerGatewayStats{Accepted: 2, Waiting: 2, Refused: map[string]uint64{}}
	for _, c := range []struct {
		name                string
		peer                func() *report.PeerStats
		hasPool, hasGateway bool
	}{
		{name: "no source"},
		{name: "nil report", peer: func() *report.PeerStats { return nil }},
		{name: "empty report", peer: func() *report.PeerStats { return &report.PeerStats{} }},
		{name: "terminal", peer: func() *report.PeerStats { return &report.PeerStats{Pool: pool} }, hasPool: true},
		{name: "gateway", peer: func() *report.PeerStats { return &report.PeerStats{Gateway: gateway} }, hasGateway: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) { return nil, nil })
			m.Peer = c.peer
			var pools, gateways int
			for key := range peerSeries(t, m) {
				switch {
				case strings.HasPrefix(key, "pepsal_peer_pool_"):
					pools++
				case strings.HasPrefix(key, "pepsal_peer_gateway_"):
					gateways++
				default:
					t.Errorf("%s: neither pool nor gateway", key)
				}
			}
			// 9 pool families, one of them with 3 states and one with 2
			// reasons; 7 gateway families, one with every auth reason.
			wantPools, wantGateways := 0, 0
			if c.hasPool {
				wantPools = 7 + 3 + 2
			}
			if c.hasGateway {
				wantGateways = 6 + len(report.AuthReasons)
			}
			if pools != wantPools || gateways != wantGateways {
				t.Errorf("%d pool and %d gateway series, want %d and %d", pools, gateways, wantPools, wantGateways)
			}
		})
	}
}

// peerSeries scrapes m through a pedantic registry (every series must be
// described) and returns its pepsal_peer_ series as name{labels} -> value.
func peerSeries(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, fam := range fams {
		if !strings.HasPrefix(fam.GetName(), "pepsal_peer_") {
			continue
		}
		for _, s := range fam.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[fam.GetName()+"{"+strings.Join(labels, ",")+"}"] = s.GetGauge().GetValue() + s.GetCounter().GetValue()
		}
	}
	return out
}

// TestMetricsFallbacksByReason: closed fallbacks are counted by reason.
func TestMetricsFallbacksByReason(t *testing.T) {
	table := proxy.NewTable()
	c := netip.MustParseAddrPort("10.0.0.1:1")
	for _, relay := range []string{"userspace: client closed before insert", "userspace: server closed before insert", "userspace: client: update pepsal_relay: no space", "kernel"} {
		record := table.Add(c, c, conn.Kernel)
		record.SetRelay(nettest.RelayState(t, relay))
		table.Remove(record, conn.Completed)
	}
	m := NewMetrics(table, func() ([]loader.Counter, error) { return nil, nil })
	want := `
# HELP pepsal_relay_fallbacks_total Closed connections that were relayed in userspace although the kernel relay was asked for, by reason class.
# TYPE pepsal_relay_fallbacks_total counter
pepsal_relay_fallbacks_total{reason="closed_before_insert"} 2
pepsal_relay_fallbacks_total{reason="first_bytes_partial"} 0
pepsal_relay_fallbacks_total{reason="insert_failed"} 1
pepsal_relay_fallbacks_total{reason="setup_failed"} 0
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "pepsal_relay_fallbacks_total"); err != nil {
		t.Error(err)
	}
	if s := table.Stats(); s.Fallback != 3 || s.FallbackByReason["closed_before_insert"] != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestMetricsPerClient: the clients at --max-conns-per-client and the times
// one reached it are read from the table's admission at each scrape.
func TestMetricsPerClient(t *testing.T) {
	table := proxy.NewTable()
	a := proxy.NewAdmission(100, func(bool) error { return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.LimitPerClient(2, func(netip.Addr, bool) error { return nil })
	table.SetAdmission(a)
	client, server := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.1.1:80")
	table.AddDiverted(client, server, conn.Splice)
	table.AddDiverted(client, server, conn.Splice)
	m := NewMetrics(table, func() ([]loader.Counter, error) { return nil, nil })
	want := `
# HELP pepsal_clients_at_limit Client addresses holding --max-conns-per-client split connections now: their new connections are forwarded unsplit (counted as the syn_bypass_source decision).
# TYPE pepsal_clients_at_limit gauge
pepsal_clients_at_limit 1
# HELP pepsal_client_limit_trips_total Times a client address reached --max-conns-per-client.
# TYPE pepsal_client_limit_trips_total counter
pepsal_client_limit_trips_total 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "pepsal_clients_at_limit", "pepsal_client_limit_trips_total"); err != nil {
		t.Error(err)
	}
	lintMetrics(t, m)
}
