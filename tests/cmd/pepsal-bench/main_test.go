// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/bench"
)

// TestWriteReport: the report and its charts land beside --out, the report
// links the charts by a path relative to itself, and nothing else is written
// (the analysis file beside it stays as it was).
func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "BENCHMARKS.md")
	analysis := filepath.Join(dir, bench.AnalysisFile)
	if err := os.WriteFile(analysis, []byte("by hand\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := bench.Spec{Profile: "geo", Topo: bench.TwoPEP, Transfers: bench.SatTransfers}
	sat := []*bench.SpecResult{{Spec: spec, Runs: 1, Timeout: time.Minute, Rows: []*bench.Row{
		{Mode: bench.NoProxy, Samples: map[string][]float64{"100 KB": {2.43}, "1 MB": {4.85}, "10 MB": {8.84}}},
		{Mode: bench.Mode{Name: "pepsal splice", Relay: "splice"}, Samples: map[string][]float64{"100 KB": {0.64}, "1 MB": {1.02}, "10 MB": {4.79}}},
	}}}
	cfg, err := bench.ConfigFromEnv(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	if err := writeReport(cfg, bench.SystemInfo{}, bench.Results{Sat: sat}, out, filepath.Join(dir, bench.ChartDir)); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	link := bench.ChartDir + "/" + bench.SatChartFile(spec)
	if !strings.Contains(string(md), "]("+link+")") {
		t.Errorf("report does not link %s:\n%s", link, md)
	}
	if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(link))); err != nil || st.Size() == 0 {
		t.Errorf("chart %s: %v", link, err)
	}
	if b, _ := os.ReadFile(analysis); string(b) != "by hand\n" {
		t.Errorf("the analysis file changed: %q", b)
	}
}

// TestRunBenchRefusesAnalysis: the analysis file is never a report's --out.
func TestRunBenchRefusesAnalysis(t *testing.T) {
	out := filepath.Join(t.TempDir(), bench.AnalysisFile)
	err := runBench(context.Background(), bench.Config{}, out, "", slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "hand-written analysis") {
		t.Errorf("got %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("the analysis file was written")
	}
}

// TestWriteReportChartFails: charts that cannot be written are an error
// naming the report, and the report is not written.
func TestWriteReportChartFails(t *testing.T) {
	dir := t.TempDir()
	out, charts := filepath.Join(dir, "BENCHMARKS.md"), filepath.Join(dir, "charts")
	if err := os.WriteFile(charts, nil, 0o644); err != nil { // a file where the directory goes
		t.Fatal(err)
	}
	spec := bench.Spec{Profile: "geo", Topo: bench.Gateway, Transfers: bench.SatTransfers}
	sat := []*bench.SpecResult{{Spec: spec, Runs: 1, Timeout: time.Minute, Rows: []*bench.Row{
		{Mode: bench.NoProxy, Samples: map[string][]float64{"1 MB": {4.85}}}}}}
	err := writeReport(bench.Config{}, bench.SystemInfo{}, bench.Results{Sat: sat}, out, charts)
	if err == nil || !strings.Contains(err.Error(), "charts for "+out) {
		t.Errorf("got %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("report written without its charts")
	}
}
