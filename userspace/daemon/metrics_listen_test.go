// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsListen: the listeners' backlog and the namespace's listen
// queue and SYN cookie counters, read at each scrape, under names that pass
// the linter.
func TestMetricsListen(t *testing.T) {
	m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) {
		return []loader.Counter{{Name: "ack_cookie_steered", Value: 6}}, nil
	})
	ls := report.ListenStats{Backlog: 128, Overflows: 2, Drops: 3, CookiesSent: 40, CookiesRecv: 9, CookiesFailed: 1}
	m.Listen = func() report.ListenStats { return ls }
	want := `
# HELP pepsal_classifier_packets_total Packets on an intercepted interface other than a flow's opening SYN, by the classifier's decision (the counter's name in pepsal_counters).
# TYPE pepsal_classifier_packets_total counter
pepsal_classifier_packets_total{decision="ack_cookie_steered"} 6
# HELP pepsal_listen_backlog The proxy listeners' backlog, their SYN and accept queue length: an eighth of --max-conns within 512..65535, capped by net.core.somaxconn.
# TYPE pepsal_listen_backlog gauge
pepsal_listen_backlog 128
# HELP pepsal_tcp_listen_overflows_total SYNs and handshake ACKs dropped because an accept queue was full (TcpExt ListenOverflows): every listener of the network namespace, not only pepsal's.
# TYPE pepsal_tcp_listen_overflows_total counter
pepsal_tcp_listen_overflows_total 2
# HELP pepsal_tcp_listen_drops_total Packets dropped at a listener, overflows included (TcpExt ListenDrops): every listener of the network namespace, not only pepsal's.
# TYPE pepsal_tcp_listen_drops_total counter
pepsal_tcp_listen_drops_total 3
# HELP pepsal_tcp_syncookies_total SYN cookies sent (a full SYN queue, or tcp_syncookies=2), received valid in an ACK, and failed (TcpExt Syncookies*): every listener of the network namespace, not only pepsal's.
# TYPE pepsal_tcp_syncookies_total counter
pepsal_tcp_syncookies_total{event="failed"} 1
pepsal_tcp_syncookies_total{event="received"} 9
pepsal_tcp_syncookies_total{event="sent"} 40
`
	names := []string{"pepsal_classifier_packets_total", "pepsal_listen_backlog", "pepsal_tcp_listen_overflows_total",
		"pepsal_tcp_listen_drops_total", "pepsal_tcp_syncookies_total"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	lintMetrics(t, m)

	// Counters the daemon could not read: the backlog stays, the
	// counters are not served as zeros, the rest of the scrape is.
	ls = report.ListenStats{Backlog: 128, Unreadable: "read netstat: gone"}
	h, err := m.Handler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "pepsal_listen_backlog 128") || !strings.Contains(body, "pepsal_connections_active 0") {
		t.Errorf("status %d, body:\n%s", rec.Code, body)
	}
	if strings.Contains(body, "pepsal_tcp_syncookies_total{") || strings.Contains(body, "pepsal_tcp_listen_overflows_total 0") {
		t.Errorf("listen counters served from a failed read:\n%s", body)
	}
}

// TestListenStats: the daemon reads its namespace's counters.
func TestListenStats(t *testing.T) {
	s := listenStats(256)
	if s.Backlog != 256 || s.Unreadable != "" {
		t.Errorf("%+v", s)
	}
}
