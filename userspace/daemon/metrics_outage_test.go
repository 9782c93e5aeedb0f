// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The outage watch's metrics say what its status says, and are absent
// without a watch.
func TestOutageMetrics(t *testing.T) {
	m := NewMetrics(proxy.NewTable(), func() ([]loader.Counter, error) { return nil, nil })
	names := []string{"pepsal_link_outages_total", "pepsal_link_outage_seconds_total", "pepsal_link_outage_last_seconds",
		"pepsal_stalled_legs_kicked_total", "pepsal_link_remotes_probed"}
	if n := testutil.CollectAndCount(m, names...); n != 0 {
		t.Fatalf("%d outage series without a watch", n)
	}
	m.Outages = func() *report.OutageStats {
		return &report.OutageStats{Seen: 2, TotalMs: 25500, LastMs: 20500, Kicked: 7, KickFailed: 1, Probing: 3, Down: 1}
	}
	want := `
# HELP pepsal_link_outage_last_seconds The latest outage's length.
# TYPE pepsal_link_outage_last_seconds gauge
pepsal_link_outage_last_seconds 20.5
# HELP pepsal_link_outage_seconds_total The outages' lengths, summed: from its last answer before to its first after.
# TYPE pepsal_link_outage_seconds_total counter
pepsal_link_outage_seconds_total 25.5
# HELP pepsal_link_outages_total Link outages toward the other pepsal that ended: it was silent for 2 s while legs toward it were stalled, then answered.
# TYPE pepsal_link_outages_total counter
pepsal_link_outages_total 2
# HELP pepsal_link_remotes_probed Pepsals probed now because legs toward them are stalled, by state: answering, silent (an outage).
# TYPE pepsal_link_remotes_probed gauge
pepsal_link_remotes_probed{state="answering"} 2
pepsal_link_remotes_probed{state="silent"} 1
# HELP pepsal_stalled_legs_kicked_total Stalled long legs told to retransmit when the link returned (RFC 6069 host unreachables to this host), by result: kicked, failed (the kernel refused the error).
# TYPE pepsal_stalled_legs_kicked_total counter
pepsal_stalled_legs_kicked_total{result="failed"} 1
pepsal_stalled_legs_kicked_total{result="kicked"} 7
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	lintMetrics(t, m)
}
