// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
)

// The charts draw the same medians as the tables they stand beside, as
// grouped bars: a group per column (page variant or download size), a bar
// per mode. gonum/plot writes SVG without timestamps, so the same results
// give the same bytes and a re-run changes the files only where numbers did.

// ChartDir is where `make bench` writes the charts, relative to BENCHMARKS.md.
const ChartDir = "docs/bench"

// barChart is what one chart shows.
type barChart struct {
	File   string // base name, .svg
	Title  string
	YLabel string
	Groups []string    // x-axis categories
	Series []barSeries // one per mode, in the table's order
	Limit  float64     // seconds of the time-out: +Inf medians are drawn at it
}

// barSeries is one mode: a value per group, NaN where it has none.
type barSeries struct {
	Name   string
	Values []float64
}

// WebChartFile is the chart of one profile's page loads.
func WebChartFile(profile string) string { return "page-load-" + slug(profile) + ".svg" }

// SatChartFile is the chart of one satellite table's downloads.
func SatChartFile(s Spec) string {
	return "download-" + slug(s.profileName()) + "-" + slug(string(s.Topo)) + ".svg"
}

func slug(s string) string {
	return strings.Join(strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}), "-")
}

// webChart: per page variant, each available mode's median load time.
func webChart(t *WebTable) barChart {
	c := barChart{File: WebChartFile(t.Profile), Limit: t.Timeout.Seconds(), YLabel: "page load, s (lower is better)",
		Title: fmt.Sprintf("%s: page load in Chromium (%s)", t.Profile, strings.Replace(medianOf(t.Runs), "run", "load", 1))}
	for _, p := range WebProtos {
		c.Groups = append(c.Groups, p.Label)
	}
	for _, r := range t.Rows {
		if r.Unavailable != "" {
			continue
		}
		s := barSeries{Name: r.Mode.Name}
		for _, p := range WebProtos {
			s.Values = append(s.Values, Median(r.Load[p.Label]))
		}
		c.Series = append(c.Series, s)
	}
	return c
}

// satChart: per download size, each available mode's median time.
func satChart(r *SpecResult) barChart {
	c := barChart{File: SatChartFile(r.Spec), Limit: r.Timeout.Seconds(), YLabel: "download time, s (lower is better)",
		Title: fmt.Sprintf("%s, %s: downloads (%s)", r.Spec.profileName(), r.Spec.Topo, medianOf(r.Runs))}
	var cols []string
	for _, t := range r.Spec.Transfers {
		if !t.Up {
			cols = append(cols, t.Label)
		}
	}
	c.Groups = cols
	for _, row := range r.Rows {
		if row.Unavailable != "" {
			continue
		}
		s := barSeries{Name: row.Mode.Name}
		for _, col := range cols {
			s.Values = append(s.Values, Median(row.Samples[col]))
		}
		c.Series = append(c.Series, s)
	}
	return c
}

// hasData tells whether a chart has a bar to draw.
func (c barChart) hasData() bool {
	for _, s := range c.Series {
		for _, v := range s.Values {
			if !math.IsNaN(v) {
				return true
			}
		}
	}
	return false
}

// Chart sizes: wide enough for five bars in each of two or three groups.
const (
	chartWidth  = 17 * vg.Centimeter
	chartHeight = 10 * vg.Centimeter
)

// SVG renders the chart. gonum/plot panics on some failures (a font it
// cannot load); that becomes an error here so that the bench says why.
func (c barChart) SVG() ([]byte, error) {
	b, err := c.render("svg")
	// The fonts are not embedded (hundreds of kB a chart): a viewer without
	// Liberation Sans takes a metric-compatible or generic sans-serif.
	return bytes.ReplaceAll(b, []byte("font-family:Liberation Sans;"), []byte(svgFonts)), err
}

const svgFonts = "font-family:'Liberation Sans',Arial,Helvetica,sans-serif;"

func (c barChart) render(format string) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("chart %s: drawing failed: %v", c.File, r)
		}
	}()
	p, err := c.plot()
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", c.File, err)
	}
	w, err := p.WriterTo(chartWidth, chartHeight, format)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", c.File, err)
	}
	var b bytes.Buffer
	if _, err := w.WriteTo(&b); err != nil {
		return nil, fmt.Errorf("chart %s: %w", c.File, err)
	}
	return b.Bytes(), nil
}

// plot lays out the grouped bars with each bar's value written above it.
func (c barChart) plot() (*plot.Plot, error) {
	if len(c.Series) == 0 || len(c.Groups) == 0 {
		return nil, errors.New("no data")
	}
	p := plot.New()
	sans(&p.Title.TextStyle, &p.X.Label.TextStyle, &p.Y.Label.TextStyle, &p.X.Tick.Label, &p.Y.Tick.Label, &p.Legend.TextStyle)
	p.Title.Text = c.Title
	p.Y.Label.Text = c.YLabel
	p.Y.Min = 0
	p.NominalX(c.Groups...)
	p.X.Min, p.X.Max = -0.5, float64(len(c.Groups))-0.5
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = 10
	n := len(c.Series)
	// A group takes 80% of its slot of the data area (about 60 pt go to the axis).
	width := vg.Length(0.8*float64(chartWidth-60)/float64(len(c.Groups))) / vg.Length(n)
	top := 0.0
	for i, s := range c.Series {
		vals, labels := make(plotter.Values, len(s.Values)), make([]string, len(s.Values))
		for j, v := range s.Values {
			vals[j], labels[j] = c.bar(v)
			top = math.Max(top, vals[j])
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return nil, err
		}
		bars.Offset = vg.Length(float64(i)-float64(n-1)/2) * width
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		xys := make(plotter.XYs, len(vals))
		for j := range vals {
			xys[j] = plotter.XY{X: float64(j), Y: vals[j]}
		}
		lab, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return nil, err
		}
		for k := range lab.TextStyle {
			sans(&lab.TextStyle[k])
			lab.TextStyle[k].Font.Size = 7
			lab.TextStyle[k].XAlign = text.XCenter
		}
		lab.Offset = vg.Point{X: bars.Offset, Y: 2}
		p.Add(bars, lab)
		p.Legend.Add(s.Name, bars)
	}
	// Headroom above the tallest bar for the legend, one line per mode.
	p.Y.Max = top * (1.2 + 0.1*float64(n))
	return p, nil
}

// bar is the height and the label of one median: a time-out is drawn at the
// time-out and labelled as a bound, a missing value is an empty slot.
func (c barChart) bar(v float64) (float64, string) {
	switch {
	case math.IsNaN(v):
		return 0, "n/a"
	case math.IsInf(v, 1):
		return c.Limit, "> " + FormatSeconds(c.Limit)
	}
	return v, FormatSeconds(v)
}

func sans(styles ...*text.Style) {
	for _, s := range styles {
		s.Font.Variant = "Sans"
	}
}

// chartsOf are the charts of a run's results, in the report's order: the
// satellite tables, then the page loads. Tables without a bar are left out.
func chartsOf(sat []*SpecResult, web *WebResult) []barChart {
	var cs []barChart
	for _, r := range sat {
		if r != nil {
			cs = append(cs, satChart(r))
		}
	}
	if web != nil {
		for _, t := range web.Tables {
			cs = append(cs, webChart(t))
		}
	}
	out := cs[:0]
	for _, c := range cs {
		if c.hasData() {
			out = append(out, c)
		}
	}
	return out
}

// WriteCharts renders every chart of the results into dir (created if
// needed) and returns the files' base names. Any failure is an error: a
// report must not link to a chart that was not drawn.
func WriteCharts(dir string, sat []*SpecResult, web *WebResult) (map[string]bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("charts: %w", err)
	}
	written := map[string]bool{}
	for _, c := range chartsOf(sat, web) {
		b, err := c.SVG()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, c.File), b, 0o644); err != nil {
			return nil, fmt.Errorf("charts: %w", err)
		}
		written[c.File] = true
	}
	return written, nil
}
