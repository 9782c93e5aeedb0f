// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var imageLink = regexp.MustCompile(`!\[[^\]]*\]\(([^)]+)\)`)

// TestReportLinksCharts: the report shows each chart the run drew, beside
// its table, at a path relative to the report that exists; it links the
// analysis file; without charts it shows no image.
func TestReportLinksCharts(t *testing.T) {
	sat, web := fixtureResults()
	web.Page, web.Browser, web.Nginx = GeneratePage(), "Chromium 1", "nginx/1"
	root := t.TempDir()
	dir := filepath.Join(root, ChartDir)
	written, err := WriteCharts(dir, sat, web)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := ConfigFromEnv(env(nil))
	md := Report(cfg, SystemInfo{}, Results{Sat: sat, Web: web, Elapsed: time.Minute, ChartDir: ChartDir, Charts: written})
	links := imageLink.FindAllStringSubmatch(md, -1)
	if len(links) != len(written) {
		t.Errorf("%d images for %d charts:\n%s", len(links), len(written), md)
	}
	for _, l := range links {
		if _, err := os.Stat(filepath.Join(root, l[1])); err != nil {
			t.Errorf("the report links %s: %v", l[1], err)
		}
	}
	for _, want := range []string{
		"![geo: page load times](docs/bench/page-load-geo.svg)\n\n### geo, page load in Chromium",
		"| no proxy | 2.43 s |",
		"![geo, two PEPs: download times](docs/bench/download-geo-two-peps.svg)",
		"[" + AnalysisFile + "](" + AnalysisFile + ")",
		"## Page loads in a real browser", "A synthetic page", "### leo, page load in Chromium",
		"writes no file", ChartDir + "/",
	} {
		if !strings.Contains(strings.Join(strings.Fields(md), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The download chart comes after its own table, before the next one.
	geo2 := strings.Index(md, "### geo, two PEPs")
	if img := strings.Index(md, "download-geo-two-peps.svg"); img < geo2 || img > strings.Index(md, "### geo-lossy, two PEPs") {
		t.Error("the geo two-PEP chart is not under its table")
	}
	if md := Report(cfg, SystemInfo{}, Results{Sat: sat, Web: web}); imageLink.MatchString(md) {
		t.Error("images in a report whose run drew no chart")
	}
}

// TestReportReference: the settings and the satellite section say why the
// reference row is missing, or name its binary.
func TestReportReference(t *testing.T) {
	sat, _ := fixtureResults()
	cfg, _ := ConfigFromEnv(env(nil))
	cfg.ReferenceMissing = "../shared/reference absent (PEPSAL_BENCH_REF_SRC)"
	md := Report(cfg, SystemInfo{}, Results{Sat: sat})
	if !strings.Contains(md, "reference PEPsal not run: ../shared/reference absent") || !strings.Contains(md, "Reference PEPsal row: not run: ../shared/reference absent") {
		t.Errorf("missing reference not explained:\n%s", md)
	}
	cfg.ReferenceBin = "/var/cache/pepsal-bench-ref/pepsal-ref"
	if md := Report(cfg, SystemInfo{}, Results{Sat: sat}); !strings.Contains(md, "reference PEPsal `/var/cache/pepsal-bench-ref/pepsal-ref`") || strings.Contains(md, "Reference PEPsal row") {
		t.Errorf("reference binary not shown:\n%s", md)
	}
}

// TestEnsureReferenceAbsent: without the reference directory nothing is
// built and the reason names the directory as it was given.
func TestEnsureReferenceAbsent(t *testing.T) {
	tmp := t.TempDir()
	vars := map[string]string{"PEPSAL_BENCH_REF_SRC": filepath.Join(tmp, "no-reference"), "PEPSAL_BENCH_REF_CACHE": filepath.Join(tmp, "cache")}
	getenv := func(k string) string { return vars[k] }
	bin, why := EnsureReference(context.Background(), Config{}, getenv, slog.New(slog.DiscardHandler))
	if bin != "" || why != filepath.Join(tmp, "no-reference")+" absent (PEPSAL_BENCH_REF_SRC)" {
		t.Errorf("got %q, %q", bin, why)
	}
	if _, err := os.Stat(filepath.Join(tmp, "cache")); err == nil {
		t.Error("a cache directory was made for nothing")
	}
	bin, why = EnsureReference(context.Background(), Config{ReferenceBin: filepath.Join(tmp, "pepsal-ref")}, getenv, slog.New(slog.DiscardHandler))
	if bin != "" || !strings.HasSuffix(why, "pepsal-ref not found") {
		t.Errorf("a missing PEPSAL_REFERENCE_BIN: %q, %q", bin, why)
	}
}

// TestWebTableNotRun: a reference peer that is not there is "not run" with
// its reason; one that failed to start stays "unavailable".
func TestWebTableNotRun(t *testing.T) {
	_, web := fixtureResults()
	tab := web.Tables[0]
	tab.Rows[3].Unavailable = notRun + "../shared/reference absent (PEPSAL_BENCH_REF_SRC)"
	tab.Rows[4].Unavailable = "QPEP server not listening on udp 1443"
	md := strings.Join(strings.Fields(tab.Table().Markdown()), " ")
	for _, want := range []string{
		"| PEPsal 2.0.2, gateway | not run | not run | not run | not run |",
		"- PEPsal 2.0.2, gateway: not run: ../shared/reference absent",
		"| QPEP 0.7.1, terminal + gateway | unavailable |",
		"- QPEP 0.7.1, terminal + gateway unavailable: QPEP server not listening",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}

// TestCommittedReport: the committed BENCHMARKS.md is the generator's
// (its opening line and its How to run and Method, word for word), so a
// change to either is made in report.go, not by hand in the file.
func TestCommittedReport(t *testing.T) {
	b, err := os.ReadFile("../../BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	if !strings.Contains(md, method) {
		t.Error("BENCHMARKS.md's How to run and Method differ from report.go's: change report.go (and copy its text, or run make bench)")
	}
	gen := Report(Config{}, SystemInfo{}, Results{ChartDir: ChartDir})
	if first := gen[:strings.Index(gen, "\n\nMeasured")]; !strings.HasPrefix(md, first) {
		t.Errorf("BENCHMARKS.md does not open with the generator's %q", first)
	}
}
