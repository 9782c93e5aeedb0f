package userspace

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsCollect: what a scrape says is what the table and the counters
// hold, under names that pass the Prometheus linter.
func TestMetricsCollect(t *testing.T) {
	table := NewTable()
	client, server := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.1.1:80")
	done := table.Add(client, server, "kernel")
	done.setMoved(Moved{ToServer: 100, ToClient: 1000, KernelToServer: 60, KernelToClient: 900})
	table.Remove(done, Completed)
	fell := table.Add(client, server, "kernel")
	fell.SetRelay("userspace: client closed before insert")
	fell.add(7, 3)
	table.Remove(fell, WasReset)
	table.Remove(table.Add(client, server, "splice"), UpstreamFailed)
	live := table.Add(client, server, "kernel")
	live.SetRelay("userspace: first bytes not read whole")

	m := NewMetrics(table, func() ([]loader.Counter, error) {
		return []loader.Counter{{Name: "syn_diverted", Value: 4}, {Name: "relay_redirected", Value: 9}}, nil
	})
	m.ObserveConnect(20*time.Millisecond, nil)
	m.ObserveConnect(3*time.Second, errors.New("refused"))
	split := readSplitStats()
	splitStats.localFailed.Add(2)
	splitStats.tuningSkipped.Add(1)

	want := fmt.Sprintf(`
# HELP pepsal_connections_active Split connections open now.
# TYPE pepsal_connections_active gauge
pepsal_connections_active 1
# HELP pepsal_connections_accepted_total Diverted connections accepted by the proxy.
# TYPE pepsal_connections_accepted_total counter
pepsal_connections_accepted_total 4
# HELP pepsal_connections_closed_total Split connections ended, by outcome.
# TYPE pepsal_connections_closed_total counter
pepsal_connections_closed_total{outcome="completed"} 1
pepsal_connections_closed_total{outcome="loop_refused"} 0
pepsal_connections_closed_total{outcome="reset"} 1
pepsal_connections_closed_total{outcome="upstream_failed"} 1
# HELP pepsal_relayed_bytes_total Bytes relayed by closed connections, by direction.
# TYPE pepsal_relayed_bytes_total counter
pepsal_relayed_bytes_total{direction="to_client"} 1003
pepsal_relayed_bytes_total{direction="to_server"} 107
# HELP pepsal_relayed_by_mover_bytes_total Bytes relayed by closed connections (both directions), by who moved them: the kernel's sk_skb verdict or userspace.
# TYPE pepsal_relayed_by_mover_bytes_total counter
pepsal_relayed_by_mover_bytes_total{mover="kernel"} 960
pepsal_relayed_by_mover_bytes_total{mover="userspace"} 150
# HELP pepsal_bpf_decisions_total Classifier, steering, relay and sock_ops decisions taken in BPF (pepsal_counters).
# TYPE pepsal_bpf_decisions_total counter
pepsal_bpf_decisions_total{decision="relay_redirected"} 9
pepsal_bpf_decisions_total{decision="syn_diverted"} 4
# HELP pepsal_relay_fallbacks_total Closed connections that were relayed in userspace although the kernel relay was asked for.
# TYPE pepsal_relay_fallbacks_total counter
pepsal_relay_fallbacks_total 1
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
`, split.LocalFailed+2, split.UpstreamTuningSkipped+1)
	names := []string{"pepsal_connections_active", "pepsal_connections_accepted_total", "pepsal_connections_closed_total",
		"pepsal_relayed_bytes_total", "pepsal_relayed_by_mover_bytes_total", "pepsal_bpf_decisions_total",
		"pepsal_relay_fallbacks_total", "pepsal_relay_fallback_connections", "pepsal_local_failures_total", "pepsal_upstream_tuning_skipped_total"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m, "pepsal_upstream_connect_duration_seconds"); n != 2 {
		t.Errorf("connect histogram: %d series, want success and failure", n)
	}
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
	m := NewMetrics(NewTable(), func() ([]loader.Counter, error) { return nil, errors.New("map gone") })
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
	if strings.Contains(body, "pepsal_bpf_decisions_total{") {
		t.Errorf("decisions served from a failed read:\n%s", body)
	}
}

func TestMetricsFallbackReason(t *testing.T) {
	for relay, want := range map[string]string{
		"splice":                                 "",
		"kernel":                                 "",
		"userspace: first bytes not read whole":  "first_bytes_partial",
		"userspace: server closed before insert": "closed_before_insert",
		"userspace: client: update pepsal_relay: no space": "insert_failed",
		"userspace: server: bad fd":                        "insert_failed",
		"userspace: SO_COOKIE: bad file descriptor":        "setup_failed",
	} {
		got, ok := fallbackReason(relay)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", relay, got, ok, want)
		}
	}
}
