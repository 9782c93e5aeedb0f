// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func noCounters() ([]loader.Counter, error) { return nil, nil }

// TestMetricsBuildInfo: one series at 1 naming the version and the Go
// release.
func TestMetricsBuildInfo(t *testing.T) {
	m := NewMetrics(proxy.NewTable(), noCounters)
	m.SetVersion("v0.9.1")
	fam := gather(t, m)["pepsal_build_info"]
	if fam == nil || len(fam.GetMetric()) != 1 || fam.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Fatalf("pepsal_build_info: %v", fam)
	}
	labels := map[string]string{}
	for _, l := range fam.GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != "v0.9.1" || labels["goversion"] != runtime.Version() || labels["goarch"] != runtime.GOARCH {
		t.Errorf("labels %v", labels)
	}
	lintMetrics(t, m)
}

// TestMetricsLiveBytes: bytes count while connections live, in userspace
// (splice) and in the kernel relay's maps, and never go down when a live
// connection closes, even if its final count is below what a scrape read.
func TestMetricsLiveBytes(t *testing.T) {
	table := proxy.NewTable()
	a := netip.MustParseAddrPort("10.0.0.1:40000")
	splice := table.Add(a, a, conn.Splice)
	kernel := table.Add(a, a, conn.Kernel)
	inMaps := conn.Moved{ToServer: 500, ToClient: 7000, KernelToServer: 400, KernelToClient: 6000}
	kernel.SetLiveBytes(func() conn.Moved { return inMaps })
	m := NewMetrics(table, noCounters)
	bytes := func() map[string]float64 { return series(t, m, "pepsal_relayed_bytes_total") }

	splice.AddMoved(100, 1000)
	want := map[string]float64{"to_server/kernel": 400, "to_server/userspace": 200, "to_client/kernel": 6000, "to_client/userspace": 2000}
	if got := bytes(); !equal(got, want) {
		t.Fatalf("live: %v, want %v", got, want)
	}
	splice.AddMoved(50, 0) // a long download grows between scrapes
	inMaps.KernelToClient, inMaps.ToClient = 9000, 10000
	want = map[string]float64{"to_server/kernel": 400, "to_server/userspace": 250, "to_client/kernel": 9000, "to_client/userspace": 2000}
	if got := bytes(); !equal(got, want) {
		t.Fatalf("grown: %v, want %v", got, want)
	}
	// Closed with a final count short of the last live read (the maps'
	// last bytes lost at teardown): the counters hold, they do not fall.
	kernel.SetMoved(conn.Moved{ToServer: 500, ToClient: 9500, KernelToServer: 400, KernelToClient: 8500})
	table.Remove(kernel, conn.Completed)
	table.Remove(splice, conn.Completed)
	if got := bytes(); !equal(got, want) {
		t.Errorf("after close: %v, want %v held", got, want)
	}
	lintMetrics(t, m)
}

// TestMetricsAdmission: the limit, its low-water mark, the flag, its trips
// and the resource shortages; nothing of it without a limit.
func TestMetricsAdmission(t *testing.T) {
	table := proxy.NewTable()
	if n := testutil.CollectAndCount(NewMetrics(table, noCounters), "pepsal_admission_full"); n != 0 {
		t.Errorf("pepsal_admission_full without a limit: %d series", n)
	}
	adm := proxy.NewAdmission(2, func(bool) error { return nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	table.SetAdmission(adm)
	a := netip.MustParseAddrPort("10.0.0.1:40000")
	table.Add(a, a, conn.Splice)
	table.Add(a, a, conn.Splice)
	m := NewMetrics(table, noCounters)
	want := `
# HELP pepsal_admission_full 1 while new SYNs are forwarded unsplit because the limit was reached or a resource ran short; else 0.
# TYPE pepsal_admission_full gauge
pepsal_admission_full 1
# HELP pepsal_admission_full_trips_total Times the admission flag was set (the limit, or a resource shortage, stopped diverting).
# TYPE pepsal_admission_full_trips_total counter
pepsal_admission_full_trips_total 1
# HELP pepsal_admission_limit_connections The admission limit (--max-conns): at it, new SYNs are forwarded unsplit.
# TYPE pepsal_admission_limit_connections gauge
pepsal_admission_limit_connections 2
# HELP pepsal_admission_resume_connections Below this many live connections a full daemon splits new connections again (the low-water mark).
# TYPE pepsal_admission_resume_connections gauge
pepsal_admission_resume_connections 1
# HELP pepsal_resource_shortages_total Accepts and dials that failed for want of a local resource (file descriptors, memory, BPF map room); see process_open_fds and process_max_fds.
# TYPE pepsal_resource_shortages_total counter
pepsal_resource_shortages_total 0
`
	names := []string{"pepsal_admission_full", "pepsal_admission_full_trips_total", "pepsal_admission_limit_connections",
		"pepsal_admission_resume_connections", "pepsal_resource_shortages_total"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	lintMetrics(t, m)
}

// TestCounterMetricCoversEveryCounter: every counter bpf/pepsal.h declares
// surfaces in exactly one metric of one unit, and each metric holds one
// kind of thing: a SYN decision, a packet's, an skb's verdict...
func TestCounterMetricCoversEveryCounter(t *testing.T) {
	src, err := os.ReadFile("../../bpf/pepsal.h")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)struct counters \{(.*?)\n\};`).FindSubmatch(src)
	if body == nil {
		t.Fatal("struct counters not found in bpf/pepsal.h")
	}
	names := regexp.MustCompile(`__u64 (\w+);`).FindAllSubmatch(body[1], -1)
	if len(names) < 40 {
		t.Fatalf("only %d counters read", len(names))
	}
	var cs []loader.Counter
	for _, n := range names {
		name := string(n[1])
		if CounterMetric(name) == "" {
			t.Errorf("counter %s surfaces in no metric", name)
		}
		cs = append(cs, loader.Counter{Name: name, Value: 1})
	}
	m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) { return cs, nil })
	fams := gather(t, m)
	total := 0
	for _, name := range []string{"pepsal_classifier_syns_total", "pepsal_classifier_packets_total", "pepsal_steer_syns_total",
		"pepsal_relay_skbs_total", "pepsal_relay_skb_adjustments_total", "pepsal_tune_events_total"} {
		total += len(fams[name].GetMetric())
	}
	if total != len(cs) {
		t.Errorf("%d series for %d counters", total, len(cs))
	}
	for _, want := range [][2]string{{"syn_diverted", "pepsal_classifier_syns_total"}, {"pkt_forwarded", "pepsal_classifier_packets_total"},
		{"icmp_local", "pepsal_classifier_packets_total"}, {"cookie_stale_forwarded", "pepsal_classifier_packets_total"},
		{"steer_assigned", "pepsal_steer_syns_total"}, {"relay_pass_budget", "pepsal_relay_skbs_total"},
		{"relay_overlap_trimmed", "pepsal_relay_skb_adjustments_total"}, {"tune_init_cwnd", "pepsal_tune_events_total"}} {
		if got := CounterMetric(want[0]); got != want[1] {
			t.Errorf("%s in %s, want %s", want[0], got, want[1])
		}
	}
	lintMetrics(t, m)
}

// gather collects c as a scrape would.
func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// series are a family's values keyed by their label values joined by "/".
func series(t *testing.T, c prometheus.Collector, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, m := range gather(t, c)[name].GetMetric() {
		var key []string
		for _, l := range m.GetLabel() {
			key = append(key, l.GetValue())
		}
		out[strings.Join(key, "/")] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return out
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
