// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	inf := math.Inf(1)
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // unsorted on purpose
	}
	for _, c := range []struct {
		xs   []float64
		p    float64
		want float64
	}{
		{[]float64{3, 1, 2}, 50, 2},
		{[]float64{4, 1, 3, 2}, 50, 2.5},
		{[]float64{4, 1, 3, 2}, 0, 1},
		{[]float64{4, 1, 3, 2}, 100, 4},
		{[]float64{7}, 99, 7},
		{hundred, 99, 99.01},
		{hundred, 50, 50.5},
		{[]float64{1, 2, inf}, 50, 2},
		{[]float64{1, inf, inf}, 50, inf},
		{[]float64{1, 2, 3}, 150, 3},
		{[]float64{math.NaN(), 1, 3}, 50, 2},
	} {
		got := Percentile(c.xs, c.p)
		if math.Abs(got-c.want) > 1e-9 && got != c.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", c.xs, c.p, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("median of nothing should be NaN")
	}
	xs := []float64{3, 1, 2}
	Median(xs)
	if xs[0] != 3 {
		t.Error("Median sorted its input")
	}
	if got := Seconds([]time.Duration{1500 * time.Millisecond}); got[0] != 1.5 {
		t.Errorf("Seconds = %v", got)
	}
}

func TestParseProcStat(t *testing.T) {
	const stat = `cpu  100 5 50 1000 20 3 7 2 0 0
cpu0 50 2 25 500 10 1 3 1 0 0
intr 12345
`
	got, err := ParseProcStat(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUTimes{Busy: 100 + 5 + 50 + 3 + 7 + 2, Idle: 1000 + 20}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if s := BusySeconds(CPUTimes{Busy: 100}, CPUTimes{Busy: 350}); s != 2.5 {
		t.Errorf("BusySeconds = %v, want 2.5", s)
	}
	if s := BusySeconds(CPUTimes{Busy: 350}, CPUTimes{Busy: 100}); s != 0 {
		t.Errorf("BusySeconds backwards = %v, want 0", s)
	}
	for _, bad := range []string{"", "intr 1\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		if _, err := ParseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseProcStat(%q) accepted", bad)
		}
	}
	if _, err := ReadCPU(); err != nil {
		t.Errorf("ReadCPU on this machine: %v", err)
	}
}

func TestParseMemInfo(t *testing.T) {
	const mi = `MemTotal:       24000000 kB
MemFree:        20000000 kB
MemAvailable:   22000000 kB
Slab:             300000 kB
HugePages_Total:       0
`
	got, err := ParseMemInfo(strings.NewReader(mi))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Mem{Used: 2000000 << 10, Slab: 300000 << 10}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := ParseMemInfo(strings.NewReader("MemTotal: 1 kB\n")); err == nil {
		t.Error("missing MemAvailable accepted")
	}
	if _, err := ParseMemInfo(strings.NewReader("MemTotal: x kB\n")); err == nil {
		t.Error("bad number accepted")
	}
	kv, err := ParseKB(strings.NewReader("Name:\tpepsal\nVmRSS:\t   13824 kB\nThreads:\t9\n"))
	if err != nil || kv["VmRSS"] != 13824<<10 || len(kv) != 1 {
		t.Errorf("ParseKB = %v, %v", kv, err)
	}
	if rss, err := ReadRSS(os.Getpid()); err != nil || rss <= 0 {
		t.Errorf("ReadRSS(self) = %d, %v", rss, err)
	}
	if _, err := ReadMem(); err != nil {
		t.Errorf("ReadMem on this machine: %v", err)
	}
	if got := realPID(os.Getpid()); got != os.Getpid() {
		t.Errorf("realPID(self) = %d", got)
	}
}

func TestParseCPUModel(t *testing.T) {
	const ci = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
	if got := ParseCPUModel(strings.NewReader(ci)); got != "AMD EPYC 7B13" {
		t.Errorf("got %q", got)
	}
	if got := ParseCPUModel(strings.NewReader("")); got != "" {
		t.Errorf("got %q from nothing", got)
	}
}

func TestTableMarkdown(t *testing.T) {
	tb := Table{
		Title:  "### T",
		Header: []string{"mode", "1 MB"},
		Rows:   [][]string{{"no proxy", "5.12 s"}, {"pepsal splice", "3.90 s x1.31"}, {"short"}},
		Notes:  []string{"a note"},
	}
	want := `### T

| mode          |         1 MB |
| ------------- | -----------: |
| no proxy      |       5.12 s |
| pepsal splice | 3.90 s x1.31 |
| short         |              |

- a note
`
	if got := tb.Markdown(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := (Table{Header: []string{"µs"}}).Markdown(); got != "| µs  |\n| --- |\n" {
		t.Errorf("narrow column: %q", got)
	}
}

// TestFormatUnits: the report's seconds, rates, sizes and speed-ups read as a
// person writes them.
func TestFormatUnits(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{FormatSeconds(5.123), "5.12 s"},
		{FormatSeconds(21.64), "21.6 s"},
		{FormatSeconds(123.4), "123 s"},
		{FormatSeconds(0.85), "850 ms"},
		{FormatSeconds(92e-6), "92.0 µs"},
		{FormatSeconds(math.NaN()), "-"},
		{FormatSeconds(math.Inf(1)), "timeout"},
		{FormatDuration(1500 * time.Millisecond), "1.50 s"},
		{FormatRate(11.2e9), "11.2 Gbit/s"},
		{FormatRate(20e6), "20.0 Mbit/s"},
		{FormatRate(500e3), "500 kbit/s"},
		{FormatRate(math.NaN()), "-"},
		{FormatBytes(13.8e6), "13.8 MB"},
		{FormatBytes(-291e3), "-291 kB"},
		{FormatBytes(1.6e9), "1.60 GB"},
		{FormatBytes(12), "12 B"},
		{FormatSpeedup(5.1, 3.9, 90), "x1.31"},
		{FormatSpeedup(math.Inf(1), 30, 90), "x>3.00"},
		{FormatSpeedup(45, math.Inf(1), 90), "x<0.50"},
		{FormatSpeedup(math.Inf(1), math.Inf(1), 90), ""},
		{FormatSpeedup(math.NaN(), 1, 90), ""},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func env(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	c, err := ConfigFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Runs != 5 || strings.Join(c.Relays, ",") != "splice,sockmap" || len(c.Profiles) != 3 ||
		c.ServerCC != "cubic" || !c.Satellite || !c.Efficiency || !c.Memory || c.TerminalArgs != nil {
		t.Errorf("defaults: %+v", c)
	}
	if got := SatSpecs(c); len(got) != 5 || got[3].Topo != TwoPEP || got[3].Profile != "geo" {
		t.Errorf("default specs: %+v", got)
	}
	names := []string{}
	for _, m := range c.Modes() {
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "no proxy,pepsal splice,pepsal sockmap" {
		t.Errorf("modes: %v", names)
	}

	c, err = ConfigFromEnv(env(map[string]string{
		"PEPSAL_BENCH_QUICK":         "1",
		"PEPSAL_BENCH_RUNS":          "2",
		"PEPSAL_BENCH_RELAYS":        "splice",
		"PEPSAL_BENCH_ARGS":          "--role gateway --x",
		"PEPSAL_BENCH_TERMINAL_ARGS": "",
		"PEPSAL_REFERENCE_BIN":       "/opt/pepsal",
		"PEPSAL_BENCH_PARTS":         "efficiency",
		"PEPSAL_BENCH_PROFILES":      "leo geo",
		"PEPSAL_BENCH_TIMEOUT":       "45s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Quick || c.Runs != 2 || c.Satellite || !c.Efficiency || !c.Memory || c.Timeout != 45*time.Second ||
		strings.Join(c.argsFor("gateway"), " ") != "--role gateway --x" || len(c.argsFor("terminal")) != 0 ||
		c.MemDuration != 5*time.Second {
		t.Errorf("overrides: %+v", c)
	}
	if ms := c.Modes(); len(ms) != 3 || !ms[2].Reference || !ms[2].Proxied() || ms[0].Proxied() {
		t.Errorf("modes with reference: %+v", ms)
	}
	if got := SatSpecs(c); len(got) != 3 || got[2].Profile != "geo" || got[2].Topo != TwoPEP {
		t.Errorf("quick specs: %+v", got)
	}
	if c, err := ConfigFromEnv(env(map[string]string{"PEPSAL_BENCH_PARTS": "veth"})); err != nil || c.Satellite || !c.Efficiency || c.Memory {
		t.Errorf("PEPSAL_BENCH_PARTS=veth: %v %+v", err, c)
	}
	for k, v := range map[string]string{
		"PEPSAL_BENCH_RUNS":     "0",
		"PEPSAL_BENCH_PROFILES": "mars",
		"PEPSAL_BENCH_TIMEOUT":  "soon",
		"PEPSAL_BENCH_PARTS":    "all",
		"PEPSAL_BENCH_QUICK":    "yes please",
		"PEPSAL_BENCH_RELAYS":   "--relay",
		"PEPSAL_BENCH_PARALLEL": "-1",
	} {
		if _, err := ConfigFromEnv(env(map[string]string{k: v})); err == nil {
			t.Errorf("%s=%q accepted", k, v)
		}
	}
}

func TestSpecTable(t *testing.T) {
	inf := math.Inf(1)
	spec := Spec{Profile: "geo", Topo: Gateway, Transfers: []Transfer{{"1 MB", 1e6, false}, {"10 MB", 1e7, false}}}
	res := &SpecResult{Spec: spec, Runs: 3, Timeout: 90 * time.Second, Rows: []*Row{
		{Mode: NoProxy, Samples: map[string][]float64{"1 MB": {5, 5.2, 5.1}, "10 MB": {inf, inf, 80}, FirstByte: {1.2, 1.2, 1.2}}, Errors: map[string][]string{}},
		{Mode: Mode{Name: "pepsal splice", Relay: "splice"}, Samples: map[string][]float64{"1 MB": {4, 4.1}, "10 MB": {30, 31, 29}, FirstByte: {1.2, 1.2}},
			Errors: map[string][]string{"1 MB": {"wrong byte count: downloaded 5 of 1000000 bytes"}}, Attempted: 6, Connections: 7, Split: map[string]uint64{"router": 4}},
		{Mode: Mode{Name: "pepsal sockmap", Relay: "sockmap"}, Unavailable: "--relay sockmap is not available yet"},
	}}
	md := res.Table().Markdown()
	for _, want := range []string{
		"### geo, gateway PEP (median of 3 runs)",
		"RTT 600ms, 20.0 Mbit/s down / 5.00 Mbit/s up",
		"| no proxy       |         5.10 s |   > 90.0 s |     1.20 s |",
		"| pepsal splice  | 4.05 s x1.26 (1 failed) | 30.0 s x>3.00 | 1.20 s x1.00 |",
		"| pepsal sockmap |    unavailable |",
		"- pepsal sockmap unavailable: --relay sockmap is not available yet",
		"- pepsal splice, 1 MB: 1 of 3 failed, e.g. wrong byte count",
		"- pepsal splice: pepsal at the router split only 4 of 7 connections",
		"counts as longer than that",
	} {
		if !strings.Contains(strings.Join(strings.Fields(md), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}

func TestLastLineAndTail(t *testing.T) {
	if got := lastLine("starting\nError: --relay sockmap is not available yet\n\n", nil); got != "Error: --relay sockmap is not available yet" {
		t.Errorf("got %q", got)
	}
	if got := lastLine("", os.ErrNotExist); !strings.Contains(got, "exited") {
		t.Errorf("got %q", got)
	}
	if got := lastLine(strings.Repeat("x", 500), nil); len(got) != 203 {
		t.Errorf("long line kept %d chars", len(got))
	}
}

func TestParseSockstat(t *testing.T) {
	const ss = "sockets: used 120\nTCP: inuse 5 orphan 0 tw 2 alloc 9 mem 37\nUDP: inuse 1 mem 2\n"
	if n, err := ParseSockstatTCPMem(strings.NewReader(ss)); err != nil || n != 37 {
		t.Errorf("got %d, %v", n, err)
	}
	for _, bad := range []string{"", "TCP: inuse 5\n", "TCP: mem x\n"} {
		if _, err := ParseSockstatTCPMem(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, err := ReadTCPMem(); err != nil {
		t.Errorf("ReadTCPMem on this machine: %v", err)
	}
}

// TestReportHasEveryTable: the Markdown report holds each table its parts ran,
// and only those.
func TestReportHasEveryTable(t *testing.T) {
	cfg, _ := ConfigFromEnv(env(nil))
	si := SystemInfo{Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Kernel: "6.18.1", CPU: "AMD EPYC", Cores: 2, DefaultC: "bbr", LoadAvg: "0.1 0.2 0.3"}
	res := &SpecResult{Spec: Spec{Profile: "leo", Topo: TwoPEP, Transfers: SatTransfers}, Runs: 5, Timeout: time.Minute,
		Rows: []*Row{{Mode: NoProxy, Samples: map[string][]float64{"1 MB": {0.5}}}}}
	eff := &EffResult{Reps: 3, Rows: []*EffRow{{Mode: NoProxy, RTTs: []float64{20e-6, 30e-6}, Streams: map[int][]StreamResult{1: {
		{Streams: 1, Bytes: 1e9, Elapsed: time.Second, BusySecs: 0.3}, {Streams: 1, Bytes: 2e9, Elapsed: time.Second, BusySecs: 0.9}, {Streams: 1, Bytes: 0}}}},
		{Mode: Mode{Name: "pepsal sockmap", Relay: "sockmap"}, Streams: map[int][]StreamResult{
			1: {{Streams: 1, Bytes: 1e9, Elapsed: time.Second, KernelShare: 0.03}, {Streams: 1, Bytes: 1e9, Elapsed: time.Second, KernelShare: 0.05}, {Streams: 1, Bytes: 1e9, Elapsed: time.Second, KernelShare: 0.04}},
			8: {{Streams: 8, Bytes: 1e9, Elapsed: time.Second, KernelShare: math.NaN()}}}}}}
	md := Report(cfg, si, Results{Sat: []*SpecResult{res}, Eff: eff, Elapsed: 90 * time.Second})
	for _, want := range []string{
		"on 2026-01-02 03:04 UTC in 1m30s: kernel 6.18.1, AMD EPYC x 2 cores",
		"5 runs per cell", "`splice sockmap`", "`bbr`",
		"### leo, two PEPs (median of 5 runs)", " 500 ms |",
		"### Relay efficiency", "median of 3 runs, interleaved", "12.0 Gbit/s", " 0.38 |", "25.0 µs", "PEPSAL_BENCH_QUICK",
		" 4% / - |", "moved in kernel",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(md, "### Memory held") {
		t.Errorf("memory table without a memory test (PEPSAL_BENCH_PARTS=veth)")
	}
	eff.MemDuration = 20 * time.Second
	if md := Report(cfg, si, Results{Sat: []*SpecResult{res}, Eff: eff, Elapsed: 90 * time.Second}); !strings.Contains(md, "### Memory held for one slow connection") {
		t.Errorf("memory table missing")
	}
}

func TestLatenessNote(t *testing.T) {
	spec := Spec{Profile: "geo", Topo: Gateway, Transfers: []Transfer{{"1 MB", 1e6, false}}}
	res := &SpecResult{Spec: spec, Runs: 1, Timeout: time.Minute, Rows: []*Row{
		{Mode: NoProxy, Samples: map[string][]float64{"1 MB": {5}}, MaxLate: 20 * time.Millisecond},
		{Mode: Mode{Name: "pepsal splice", Relay: "splice"}, Samples: map[string][]float64{"1 MB": {5}}, MaxLate: 40 * time.Millisecond},
	}}
	md := res.Table().Markdown()
	if strings.Contains(md, "no proxy: the link emulator") || !strings.Contains(md, "pepsal splice: the link emulator released a frame up to 40ms late") {
		t.Errorf("lateness notes (30 ms tolerance on a 300 ms link):\n%s", md)
	}
}
