// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsAddr is where the tests' daemons serve metrics, on the router
// namespace's loopback (the port the README suggests).
const metricsAddr = "127.0.0.1:9595"

// TestMetrics: the Prometheus endpoint says what `pepsal status --json` says,
// in both relay modes, and a bad --metrics-addr is refused before anything is
// attached.
func TestMetrics(t *testing.T) {
	for _, relay := range []string{"splice", "sockmap"} {
		t.Run(relay, func(t *testing.T) { testMetricsMatchStatus(t, defaultSuite().inRelay(relay)) })
	}
	t.Run("BadAddr", testMetricsBadAddr)
}

// sizedServer reads each connection to EOF, then answers with reply bytes
// and closes.
func sizedServer(t *testing.T, ns *testbed.NS, addr string, reply int) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			return
		}
		_, _ = c.Write(bytes.Repeat([]byte{'r'}, reply))
	})
}

func testMetricsMatchStatus(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	before := netState(t, b.Router)
	const reply = 30_000
	ups := []int{1, 1000, 70_000}
	for _, f := range families {
		sizedServer(t, b.Server, hostPort(f.server, 8080), reply)
	}
	d := b.startPepsal("--iface", testbed.RouterClientIf, "--metrics-addr", metricsAddr)

	var wantUp, wantDown uint64
	for _, f := range families {
		for _, up := range ups {
			c := mustDial(t, b.Client, hostPort(f.server, 8080))
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(bytes.Repeat([]byte{'q'}, up)); err != nil {
				t.Fatalf("%s: write: %v", f.name, err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("%s: half-close: %v", f.name, err)
			}
			n, err := io.Copy(io.Discard, c)
			if err != nil || n != reply {
				t.Fatalf("%s: read %d bytes (%v), want %d", f.name, n, err, reply)
			}
			c.Close()
			wantUp += uint64(up)
			wantDown += reply
		}
		// Nothing listens on 8081: the daemon's dial is refused.
		if c, err := dial(b.Client, hostPort(f.server, 8081), 5*time.Second); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("%s: upstream refused, client read %v, want a reset", f.name, err)
			}
			c.Close()
		}
	}
	split := uint64(len(ups) * len(families))
	failed := uint64(len(families))

	// The daemon accounts for a connection once both legs are closed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := b.daemonStatus().Daemon.Stats
		if s.Active == 0 && s.Completed+s.UpstreamFailed >= split+failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections not accounted for: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Scrape, status, scrape: equal scrapes mean nothing moved meanwhile
	// (a stray packet may bump a packet counter), so status must match them.
	var scrape map[string]*dto.MetricFamily
	var st status
	for try := 0; ; try++ {
		a := scrapeMetrics(t, b.Router)
		st = b.daemonStatus()
		z := scrapeMetrics(t, b.Router)
		if reflect.DeepEqual(pepsalValues(a), pepsalValues(z)) {
			scrape = a
			break
		}
		if try == 10 {
			t.Fatalf("metrics never stable between two scrapes:\n%v\n%v", pepsalValues(a), pepsalValues(z))
		}
		time.Sleep(200 * time.Millisecond)
	}
	s := st.Daemon.Stats
	if l := st.Daemon.Listen; l.Backlog < 128 || l.Unreadable != "" {
		t.Errorf("status listen %+v: want the listeners' backlog and the namespace's counters", l)
	}

	// What the test itself did.
	if s.Completed != split || s.UpstreamFailed != failed || s.BytesToServer != wantUp || s.BytesToClient != wantDown {
		t.Errorf("status %+v: want %d completed, %d upstream failed, %d bytes to servers, %d to clients",
			s, split, failed, wantUp, wantDown)
	}

	// Connections and bytes, each equal to status.
	get := func(name string, labels ...string) float64 { return metricValue(t, scrape, name, labels...) }
	for _, c := range []struct {
		got  float64
		want uint64
		what string
	}{
		{get("pepsal_connections_active"), uint64(s.Active), "active"},
		{get("pepsal_connections_accepted_total"), s.Accepted, "accepted"},
		{get("pepsal_connections_closed_total", "outcome", "completed"), s.Completed, "completed"},
		{get("pepsal_connections_closed_total", "outcome", "reset"), s.Reset, "reset"},
		{get("pepsal_connections_closed_total", "outcome", "upstream_failed"), s.UpstreamFailed, "upstream_failed"},
		{get("pepsal_connections_closed_total", "outcome", "loop_refused"), s.LoopRefused, "loop_refused"},
		{get("pepsal_connections_closed_total", "outcome", "dest_denied"), s.DestDenied, "dest_denied"},
		{get("pepsal_connections_denied_total", "reason", "own_address"), s.DestDeniedByReason["own_address"], "dest_denied own_address"},
		{get("pepsal_relayed_bytes_total", "direction", "to_server", "mover", "kernel") + get("pepsal_relayed_bytes_total", "direction", "to_server", "mover", "userspace"),
			s.BytesToServer, "bytes_to_server"},
		{get("pepsal_relayed_bytes_total", "direction", "to_client", "mover", "kernel") + get("pepsal_relayed_bytes_total", "direction", "to_client", "mover", "userspace"),
			s.BytesToClient, "bytes_to_client"},
		{get("pepsal_relayed_bytes_total", "direction", "to_server", "mover", "kernel") + get("pepsal_relayed_bytes_total", "direction", "to_client", "mover", "kernel"),
			s.KernelBytes, "kernel_bytes"},
		{sumFamily(scrape, "pepsal_relay_fallbacks_total"), s.Fallback, "userspace_fallback"},
		{get("pepsal_admission_limit_connections"), uint64(s.MaxConns), "max_conns"},
		{get("pepsal_admission_full"), 0, "full"},
		{get("pepsal_admission_full_trips_total"), s.FullTrips, "full_trips"},
		{get("pepsal_resource_shortages_total"), s.Shortages, "resource_shortages"},
		{get("pepsal_build_info", "version", st.Daemon.Version, "goversion", runtime.Version(), "revision", buildRevision(scrape), "goarch", runtime.GOARCH), 1, "build_info"},
		{get("pepsal_local_failures_total"), st.Daemon.LocalFailed, "local_failed"},
		{get("pepsal_upstream_tuning_skipped_total"), st.Daemon.UpstreamTuningSkipped, "upstream_tuning_skipped"},
		{get("pepsal_listen_backlog"), uint64(st.Daemon.Listen.Backlog), "listen backlog"},
		{get("pepsal_tcp_listen_overflows_total"), st.Daemon.Listen.Overflows, "listen_overflows"},
		{get("pepsal_tcp_listen_drops_total"), st.Daemon.Listen.Drops, "listen_drops"},
		{get("pepsal_tcp_syncookies_total", "event", "sent"), st.Daemon.Listen.CookiesSent, "syncookies_sent"},
		{get("pepsal_tcp_syncookies_total", "event", "received"), st.Daemon.Listen.CookiesRecv, "syncookies_recv"},
		{get("pepsal_tcp_syncookies_total", "event", "failed"), st.Daemon.Listen.CookiesFailed, "syncookies_failed"},
	} {
		if c.got != float64(c.want) {
			t.Errorf("%s: metrics %v, status %d", c.what, c.got, c.want)
		}
	}
	for _, reason := range []string{"first_bytes_partial", "closed_before_insert", "insert_failed", "setup_failed"} {
		if v := get("pepsal_relay_fallback_connections", "reason", reason); v != 0 {
			t.Errorf("fallback connections (%s) = %v with no connection open", reason, v)
		}
	}

	// Every BPF counter, by name, in its unit's metric, and nothing else.
	checkBPFCounters(t, scrape, st)
	if v := get("pepsal_classifier_syns_total", "decision", "syn_diverted"); v < float64(split+failed) {
		t.Errorf("syn_diverted = %v, want at least %d", v, split+failed)
	}

	// One connect observed per dial the daemon made.
	if n := histogramCount(t, scrape, "pepsal_upstream_connect_duration_seconds", "result", "success"); n != split {
		t.Errorf("successful connects observed: %d, want %d", n, split)
	}
	if n := histogramCount(t, scrape, "pepsal_upstream_connect_duration_seconds", "result", "failure"); n != failed {
		t.Errorf("failed connects observed: %d, want %d", n, failed)
	}
	for _, name := range []string{"go_goroutines", "process_open_fds", "process_resident_memory_bytes"} {
		if _, ok := scrape[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	// No warm paths here: no pool or gateway series, not even at 0.
	for name := range scrape {
		if strings.HasPrefix(name, "pepsal_peer_") {
			t.Errorf("%s exported by a daemon without warm paths", name)
		}
	}

	// The README's command, as printed.
	readme := fmt.Sprintf("curl -s http://%s/metrics | grep pepsal_", metricsAddr)
	out, err := b.Router.Command("sh", "-c", readme).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pepsal_connections_active 0") {
		t.Errorf("%s: %v\n%s", readme, err, out)
	}

	if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if after := netState(t, b.Router); after != before {
		t.Errorf("left traces:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out, err := b.Router.Command("curl", "-sf", "http://"+metricsAddr+"/metrics").CombinedOutput(); err == nil {
		t.Errorf("metrics still served after exit:\n%.200s", out)
	}
}

// testMetricsBadAddr: a --metrics-addr that cannot be served is one line on
// stderr, a non-zero exit, and nothing attached.
func testMetricsBadAddr(t *testing.T) {
	b := newBed(t, defaultSuite())
	before := netState(t, b.Router)
	for _, c := range []struct {
		name, addr, want string
		taken            bool
	}{
		{name: "garbage", addr: "garbage", want: "bad --metrics-addr"},
		{name: "port word", addr: "127.0.0.1:prom", want: "bad --metrics-addr"},
		{name: "not ours", addr: "192.0.2.1:9595", want: "cannot assign requested address"},
		{name: "in use", addr: metricsAddr, want: "address already in use", taken: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.taken {
				ln := listen(t, b.Router, c.addr)
				defer ln.Close()
			}
			r := b.pepsal("run", "--iface", testbed.RouterClientIf, "--metrics-addr", c.addr)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "pepsal: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("exit %d, stderr %q: want non-zero and one line with %q", r.code, r.stderr, c.want)
			}
			if after := netState(t, b.Router); after != before {
				t.Errorf("left something attached:\n%s", after)
			}
		})
	}
}

// bpfCounterMetrics are the metrics the BPF counters surface in, one
// unit each; the label is "verdict", "adjustment" or "event" where
// "decision" would misname it.
var bpfCounterMetrics = map[string]string{
	"pepsal_classifier_syns_total": "decision", "pepsal_classifier_packets_total": "decision", "pepsal_steer_syns_total": "decision",
	"pepsal_relay_skbs_total": "verdict", "pepsal_relay_skb_adjustments_total": "adjustment", "pepsal_tune_events_total": "event",
}

// checkBPFCounters: each of status's BPF counters is one series of one of
// bpfCounterMetrics, with status's value.
func checkBPFCounters(t *testing.T, scrape map[string]*dto.MetricFamily, st status) {
	t.Helper()
	if len(st.Counters) == 0 {
		t.Fatal("status lists no BPF counters")
	}
	seen := map[string]float64{}
	series := 0
	for name, label := range bpfCounterMetrics {
		for _, m := range scrape[name].GetMetric() {
			series++
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					seen[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	for _, c := range st.Counters {
		if v, ok := seen[c.Name]; !ok || v != float64(c.Value) {
			t.Errorf("counter %s: metrics %v (present %v), status %d", c.Name, v, ok, c.Value)
		}
	}
	if series != len(st.Counters) {
		t.Errorf("%d BPF counter series, status has %d counters", series, len(st.Counters))
	}
}

// sumFamily sums every series of a counter family.
func sumFamily(fams map[string]*dto.MetricFamily, name string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum
}

// buildRevision is pepsal_build_info's revision label, whatever it is.
func buildRevision(fams map[string]*dto.MetricFamily) string {
	for _, m := range fams["pepsal_build_info"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "revision" {
				return l.GetValue()
			}
		}
	}
	return ""
}

// scrapeMetrics fetches and parses the endpoint from inside ns.
func scrapeMetrics(t *testing.T, ns *testbed.NS) map[string]*dto.MetricFamily {
	t.Helper()
	cmd := ns.Command("curl", "-sSf", "--max-time", "10", "http://"+metricsAddr+"/metrics")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scrape: %v: %s", err, stderr.String())
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("parse scrape: %v\n%s", err, out)
	}
	return fams
}

// pepsalValues flattens pepsal's own series to compare two scrapes.
func pepsalValues(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, fam := range fams {
		if !strings.HasPrefix(name, "pepsal_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// findMetric is the series of family name with the given label pairs; a
// missing one fails the test.
func findMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := len(have) == len(labels)/2
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			return m
		}
	}
	t.Fatalf("metric %s%v missing", name, labels)
	return nil
}

func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := findMetric(t, fams, name, labels...)
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s%v is neither counter nor gauge", name, labels)
	return 0
}

func histogramCount(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) uint64 {
	t.Helper()
	m := findMetric(t, fams, name, labels...)
	if m.Histogram == nil {
		t.Fatalf("metric %s%v is not a histogram", name, labels)
	}
	return m.GetHistogram().GetSampleCount()
}
