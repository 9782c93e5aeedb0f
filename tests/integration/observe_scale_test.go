// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestScrapeAtScale: with 2,000 live connections a scrape counts every
// one's bytes (read at scrape time: the kernel relay's from its maps), and
// how long the scrape takes is logged (the median of 9, curl's
// time_total), not asserted: a loaded machine must not fail it.
//
//	go test -count=1 -v -run TestScrapeAtScale ./tests/integration/
func TestScrapeAtScale(t *testing.T) {
	const n = 2000
	for _, relay := range []string{"splice", "sockmap"} {
		t.Run(relay, func(t *testing.T) {
			b := newBed(t, defaultSuite())
			addr := hostPort(testbed.ServerV4, 9100)
			srv := startHelper(t, b.Server, "server "+addr)
			srv.expect(t, "listening", 30*time.Second)
			b.startPepsal("--iface", testbed.RouterClientIf, "--relay", relay, "--offload-after", "0", "--log-level", "info",
				"--metrics-addr", metricsAddr, "--max-conns", "5000", "--max-conns-per-client", "5000")
			idle := scrapeTime(t, b.Router, 9)
			cl := startHelper(t, b.Client, fmt.Sprintf("client %s %d", addr, n))
			cl.expect(t, "ready", 5*time.Minute)

			fams := scrapeMetrics(t, b.Router)
			if active := metricValue(t, fams, "pepsal_connections_active"); active != n {
				st := b.status()
				t.Fatalf("%v connections active, want %d; syn decisions %v; %+v", active, n, synCounters(st), st.Daemon.Stats)
			}
			// Each live connection moved "ping\n" each way: counted while live.
			for _, dir := range []string{"to_server", "to_client"} {
				got := metricValue(t, fams, "pepsal_relayed_bytes_total", "direction", dir, "mover", "kernel") +
					metricValue(t, fams, "pepsal_relayed_bytes_total", "direction", dir, "mover", "userspace")
				if got < 5*n {
					t.Errorf("%s: %v bytes with %d live connections that moved 5 each", dir, got, n)
				}
			}
			live := scrapeTime(t, b.Router, 9)
			t.Logf("%s: scrape took %s with no connection, %s with %d live (median of 9, curl time_total)", relay, idle, live, n)
			cl.stdin.Close()
			cl.expect(t, "closed", time.Minute)
		})
	}
}

// scrapeTime is the median time of k scrapes from inside ns.
func scrapeTime(t *testing.T, ns *testbed.NS, k int) time.Duration {
	t.Helper()
	var times []float64
	for range k {
		out, err := ns.Command("curl", "-sSf", "-o", "/dev/null", "-w", "%{time_total}", "http://"+metricsAddr+"/metrics").Output()
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		s, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			t.Fatalf("curl time_total %q: %v", out, err)
		}
		times = append(times, s)
	}
	sort.Float64s(times)
	return time.Duration(times[len(times)/2] * float64(time.Second)).Round(10 * time.Microsecond)
}
