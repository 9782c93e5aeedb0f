// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inf is a time-out in a fixture.
var inf = math.Inf(1)

// fixtureSat is a satellite table from medians: one sample per cell, the
// columns of SatTransfers then the first byte.
func fixtureSat(profile string, topo Topo, rows map[string][5]float64, order ...string) *SpecResult {
	r := &SpecResult{Spec: Spec{Profile: profile, Topo: topo, Transfers: SatTransfers}, Runs: 5, Timeout: 90 * time.Second}
	for _, name := range order {
		m := NoProxy
		if name != NoProxy.Name {
			m = Mode{Name: name, Relay: strings.Fields(name)[1]}
		}
		row := &Row{Mode: m, Samples: map[string][]float64{}}
		for i, c := range append(Spec{Transfers: SatTransfers}.columns()[:0:0], Spec{Transfers: SatTransfers}.columns()...) {
			row.Samples[c] = []float64{rows[name][i]}
		}
		r.Rows = append(r.Rows, row)
	}
	return r
}

// fixtureWeb is a page-load table from medians: HTTP/1.1 then HTTP/2 load.
func fixtureWeb(profile string, loads [][2]float64) *WebTable {
	t := &WebTable{Profile: profile, Runs: 5, Timeout: 90 * time.Second}
	for i, m := range WebModes("splice", true) {
		row := &WebRow{Mode: m, Load: map[string][]float64{}, TTFB: map[string][]float64{}}
		for j, p := range WebProtos {
			row.Load[p.Label] = []float64{loads[i][j]}
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}

// fixtureResults are the medians BENCHMARKS.md showed before the bench drew
// charts: the satellite tables with roles and warm paths (2026-11-26 06:33
// UTC) and the page loads (2026-11-26 08:40 UTC).
func fixtureResults() ([]*SpecResult, *WebResult) {
	const np, sp, sm = "no proxy", "pepsal splice", "pepsal sockmap"
	const spw, smw = sp + warmLabel, sm + warmLabel
	sat := []*SpecResult{
		fixtureSat("geo", Gateway, map[string][5]float64{np: {2.43, 4.85, 8.83, 21.6, 1.21}, sp: {1.82, 3.27, 7.32, 21.6, 1.21}, sm: {1.82, 3.27, 7.32, 21.6, 1.21}}, np, sp, sm),
		fixtureSat("geo-lossy", Gateway, map[string][5]float64{np: {3.03, 15.2, inf, 23.8, 1.20}, sp: {2.41, 4.41, 9.25, 22.9, 1.21}, sm: {1.83, 4.38, 9.12, 22.9, 1.20}}, np, sp, sm),
		fixtureSat("leo", Gateway, map[string][5]float64{np: {0.206, 0.825, 14.1, 4.38, 0.0822}, sp: {0.137, 0.321, 1.07, 4.39, 0.0828}, sm: {0.169, 0.294, 1.10, 4.37, 0.0846}}, np, sp, sm),
		fixtureSat("geo", TwoPEP, map[string][5]float64{np: {2.43, 4.85, 8.84, 21.6, 1.20}, spw: {0.645, 1.02, 4.79, 17.4, 0.604}, smw: {0.645, 1.02, 4.79, 17.4, 0.604}}, np, spw, smw),
		fixtureSat("geo-lossy", TwoPEP, map[string][5]float64{np: {2.43, 22.3, inf, 23.3, 1.20}, spw: {0.644, 1.61, 5.40, 18.9, 0.603}, smw: {0.645, 1.60, 5.41, 18.9, 0.607}}, np, spw, smw),
	}
	web := &WebResult{Relay: "splice", Warm: true, Tables: []*WebTable{
		fixtureWeb("geo", [][2]float64{{9.79, 9.87}, {7.49, 6.29}, {4.52, 3.82}, {12.7, 13.4}, {5.12, 4.87}}),
		fixtureWeb("geo-lossy", [][2]float64{{11.1, 13.4}, {8.20, 7.56}, {7.61, 5.08}, {13.7, 14.6}, {11.0, 9.92}}),
		fixtureWeb("leo", [][2]float64{{0.790, 1.18}, {0.641, 0.653}, {0.758, 0.484}, {2.75, 1.92}, {0.645, 0.681}}),
	}}
	return sat, web
}

// wellFormed reads the whole document as XML.
func wellFormed(b []byte) error {
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := d.Token(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

func TestChartsFromFixture(t *testing.T) {
	sat, web := fixtureResults()
	dir := t.TempDir()
	written, err := WriteCharts(dir, sat, web)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"download-geo-gateway-pep.svg", "download-geo-lossy-two-peps.svg", "download-leo-gateway-pep.svg",
		"download-geo-two-peps.svg", "download-geo-lossy-gateway-pep.svg", "page-load-geo.svg", "page-load-geo-lossy.svg", "page-load-leo.svg"}
	if len(written) != len(want) {
		t.Errorf("wrote %v, want %v", written, want)
	}
	for _, f := range want {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !written[f] {
			t.Errorf("%s: %v (in the list: %v)", f, err, written[f])
			continue
		}
		if err := wellFormed(b); err != nil || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s is not an SVG document: %v", f, err)
		}
	}
	page, _ := os.ReadFile(filepath.Join(dir, "page-load-geo.svg"))
	for _, s := range []string{"no proxy", "pepsal splice, gateway", "pepsal splice, terminal + gateway, warm paths",
		"PEPsal 2.0.2, gateway", "QPEP 0.7.1, terminal + gateway", "HTTP/1.1", "HTTPS, HTTP/2", "4.52 s", "12.7 s"} {
		if !bytes.Contains(page, []byte(s)) {
			t.Errorf("page-load chart lacks %q", s)
		}
	}
	dl, _ := os.ReadFile(filepath.Join(dir, "download-geo-lossy-two-peps.svg"))
	for _, s := range []string{"no proxy", "pepsal splice, warm paths", "100 KB", "10 MB", "&gt; 90.0 s", "644 ms"} {
		if !bytes.Contains(dl, []byte(s)) {
			t.Errorf("download chart lacks %q", s)
		}
	}
	if bytes.Contains(dl, []byte("10 MB up")) {
		t.Error("the download chart shows the upload")
	}
}

// TestChartDeterministic: the same results give the same bytes (no
// timestamp, no map order), so a re-run only changes what was re-measured.
func TestChartDeterministic(t *testing.T) {
	sat, web := fixtureResults()
	a, err := webChart(web.Tables[0]).SVG()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := webChart(web.Tables[0]).SVG()
	if !bytes.Equal(a, b) {
		t.Error("two renderings of the same page-load results differ")
	}
	web.Tables[0].Rows[2].Load["HTTP/1.1"] = []float64{4.6}
	if c, _ := webChart(web.Tables[0]).SVG(); bytes.Equal(a, c) {
		t.Error("a changed median left the chart unchanged")
	}
	x, _ := satChart(sat[3]).SVG()
	y, _ := satChart(sat[3]).SVG()
	if !bytes.Equal(x, y) {
		t.Error("two renderings of the same download results differ")
	}
}

// TestChartsSkip: a mode that did not start has no bar, a table where
// nothing ran has no chart, and a chart with nothing to draw is an error.
func TestChartsSkip(t *testing.T) {
	sat, web := fixtureResults()
	web.Tables[0].Rows[3].Unavailable = "build script not found"
	c := webChart(web.Tables[0])
	for _, s := range c.Series {
		if strings.HasPrefix(s.Name, "PEPsal") {
			t.Errorf("unavailable mode charted: %+v", s)
		}
	}
	for _, r := range sat[0].Rows {
		r.Samples = map[string][]float64{}
	}
	for _, c := range chartsOf(sat, web) {
		if c.File == SatChartFile(sat[0].Spec) {
			t.Errorf("chart of a table without data: %s", c.File)
		}
	}
	if _, err := (barChart{File: "x.svg", Groups: []string{"a"}}).SVG(); err == nil {
		t.Error("a chart without series rendered")
	}
	nan := math.NaN()
	if _, err := (barChart{File: "x.svg", Groups: []string{"a", "b"}, Series: []barSeries{{"m", []float64{nan, nan}}}}).SVG(); err != nil {
		t.Errorf("a chart of empty slots: %v", err)
	}
	if h, l := (barChart{Limit: 90}).bar(inf); h != 90 || l != "> 90.0 s" {
		t.Errorf("time-out drawn as %v %q", h, l)
	}
}

// TestWriteFixtureCharts writes the fixture's charts into
// PEPSAL_BENCH_FIXTURE_CHARTS (a directory): the charts committed before
// the first `make bench` that draws them, from the same code.
func TestWriteFixtureCharts(t *testing.T) {
	dir := os.Getenv("PEPSAL_BENCH_FIXTURE_CHARTS")
	if dir == "" {
		t.Skip("PEPSAL_BENCH_FIXTURE_CHARTS not set")
	}
	sat, web := fixtureResults()
	if _, err := WriteCharts(dir, sat, web); err != nil {
		t.Fatal(err)
	}
}
