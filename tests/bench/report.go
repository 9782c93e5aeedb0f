// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// SystemInfo identifies the machine a report was measured on.
type SystemInfo struct {
	Date     time.Time
	Kernel   string // uname -r
	CPU      string // model name
	Cores    int
	DefaultC string // the kernel's default congestion control (clients and PEP legs use it)
	LoadAvg  string // 1, 5, 15 minutes, at the start: other work disturbs CPU and memory numbers
}

// ReadSystemInfo collects SystemInfo; unknown fields stay "unknown".
func ReadSystemInfo() SystemInfo {
	si := SystemInfo{Date: time.Now(), Kernel: "unknown", CPU: "unknown", Cores: runtime.NumCPU(), DefaultC: "unknown", LoadAvg: "unknown"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		si.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		if m := ParseCPUModel(f); m != "" {
			si.CPU = m
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			si.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control"); err == nil {
		si.DefaultC = strings.TrimSpace(string(b))
	}
	return si
}

// ParseCPUModel returns the first "model name" of /proc/cpuinfo.
func ParseCPUModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func orNone(args []string) string {
	if len(args) == 0 {
		return "(none)"
	}
	return "`" + strings.Join(args, " ") + "`"
}

// AnalysisFile is the hand-written analysis of the numbers, beside
// BENCHMARKS.md: the report links it, the bench never writes it.
const AnalysisFile = "BENCHMARKS-ANALYSIS.md"

// Results are what a run measured, for its report.
type Results struct {
	Sat      []*SpecResult
	Eff      *EffResult
	Web      *WebResult
	Elapsed  time.Duration
	ChartDir string          // the charts' directory, relative to the report
	Charts   map[string]bool // chart files written there (WriteCharts)
}

// chart is the Markdown image of a chart the run wrote, else nothing.
func (r Results) chart(file, alt string) string {
	if !r.Charts[file] {
		return ""
	}
	return fmt.Sprintf("![%s](%s)\n\n", alt, path.Join(filepath.ToSlash(r.ChartDir), file))
}

// Report is the BENCHMARKS.md document, all of it: machine, settings, how to
// run, method, tables with their charts. Analysis goes in AnalysisFile.
func Report(cfg Config, si SystemInfo, res Results) string {
	var b strings.Builder
	b.WriteString("# pepsal benchmarks\n\n")
	fmt.Fprintf(&b, "Written whole by `make bench`: a run replaces this file and its charts (`%s/`), so edit neither. "+
		"What the numbers mean, and measurements made by hand, are in [%s](%s), which the bench leaves alone.\n\n",
		filepath.ToSlash(res.ChartDir), AnalysisFile, AnalysisFile)
	fmt.Fprintf(&b, "Measured by `make bench` on %s in %s: kernel %s, %s x %d cores, load average %s at the start.\n\n",
		si.Date.Format("2006-01-02 15:04 MST"), res.Elapsed.Round(time.Second), si.Kernel, si.CPU, si.Cores, si.LoadAvg)
	key := ""
	if cfg.PeerKey != "" {
		key = " (KEY: 32 random bytes the bench writes to a private temporary file for the run)"
	}
	fmt.Fprintf(&b, "Settings: %d runs per cell; relays %s; `pepsal run --iface IF --relay M` followed by %s on the router of the "+
		"gateway-PEP bed, %s on the terminal and %s on the gateway of the two-PEP bed%s; "+
		"reference PEPsal %s; server sockets `%s`, clients and proxies the kernel default `%s`; transfer time-out %s.\n\n",
		cfg.Runs, orNone(cfg.Relays), cfg.describeArgs(cfg.argsFor("router")), cfg.describeArgs(cfg.argsFor("terminal")),
		cfg.describeArgs(cfg.argsFor("gateway")), key, cfg.describeReference(), cfg.ServerCC, si.DefaultC, cfg.Timeout)
	if cfg.Quick {
		b.WriteString("**Quick mode** (`PEPSAL_BENCH_QUICK=1`): one run, shorter tests; not for comparisons.\n\n")
	}
	b.WriteString(method)
	if len(res.Sat) > 0 {
		b.WriteString("## Satellite links\n\n")
		if cfg.ReferenceBin == "" {
			fmt.Fprintf(&b, "Reference PEPsal row: %s.\n\n", cfg.describeReference())
		}
		for _, r := range res.Sat {
			if r != nil {
				b.WriteString(r.Table().Markdown())
				b.WriteString("\n")
				b.WriteString(res.chart(SatChartFile(r.Spec), fmt.Sprintf("%s, %s: download times", r.Spec.profileName(), r.Spec.Topo)))
			}
		}
	}
	if res.Eff != nil {
		b.WriteString("## Relay efficiency\n\n")
		for _, t := range res.Eff.Tables() {
			b.WriteString(t.Markdown())
			b.WriteString("\n")
		}
	}
	if w := res.Web; w != nil {
		b.WriteString("## Page loads in a real browser\n\n")
		if w.Page != nil {
			b.WriteString(w.intro())
		}
		for _, t := range w.Tables {
			b.WriteString(res.chart(WebChartFile(t.Profile), t.Profile+": page load times"))
			b.WriteString(t.Table().Markdown())
			b.WriteString("\n")
		}
	}
	return b.String()
}

// describeReference is the reference PEPsal of the run: its binary, or why
// it did not run.
func (c Config) describeReference() string {
	switch {
	case c.ReferenceBin != "":
		return "`" + c.ReferenceBin + "`"
	case c.ReferenceMissing != "":
		return "not run: " + c.ReferenceMissing
	}
	return "not run (set `PEPSAL_REFERENCE_BIN`)"
}

const method = `## How to run

` + "```sh" + `
make bench                        # everything, about 35 minutes; writes this file and its charts
PEPSAL_BENCH_QUICK=1 make bench   # one run of each, geo only, a few minutes; prints the tables, writes no file
make demo                         # over GEO: no proxy, pepsal on the gateway, pepsal at both ends with warm paths; 100 KB, 1 MB, 10 MB, then page loads in Chromium; under five minutes
` + "```" + `

Without any variable, ` + "`make bench`" + ` measures every table README quotes: the satellite links
with the gateway PEP and with two PEPs (roles and warm paths), relay efficiency, and the page loads,
with PEPsal 2.0.2 and QPEP as reference rows when ` + "`../shared/reference`" + ` is there (the bench builds
them once into ` + "`/var/cache/pepsal-bench-ref`" + `; without it their rows say "not run"). It writes this
file and, from the same medians, an SVG chart per satellite table (download times) and per page-load
table into ` + "`" + ChartDir + "/`" + ` (gonum/plot; the same results give the same bytes). A chart that
cannot be drawn is an error and nothing is written. ` + "`" + AnalysisFile + "`" + ` is never written.

| variable | default | meaning |
|---|---|---|
| ` + "`PEPSAL_BENCH_RUNS`" + ` | 5 (quick: 1) | runs per cell; tables show medians |
| ` + "`PEPSAL_BENCH_PROFILES`" + ` | ` + "`geo geo-lossy leo`" + ` (quick: ` + "`geo`" + `) | link profiles, gateway-PEP topology |
| ` + "`PEPSAL_BENCH_TWO_PEP_PROFILES`" + ` | ` + "`geo geo-lossy`" + ` | profiles (also in the list above) measured with two PEPs |
| ` + "`PEPSAL_BENCH_RELAYS`" + ` | ` + "`splice sockmap`" + ` | one pepsal row per relay mode; one that does not start is "unavailable" |
| ` + "`PEPSAL_BENCH_ARGS`" + ` | see below | replaces the arguments after ` + "`pepsal run --iface IF --relay M`" + ` at every site |
| ` + "`PEPSAL_BENCH_TERMINAL_ARGS`" + ` | ` + "`PEPSAL_BENCH_ARGS`" + ` | instead, for the terminal of the two-PEP bed (set and empty: no arguments) |
| ` + "`PEPSAL_BENCH_WARM_PATHS`" + ` | 1 | 0: the two-PEP bed runs the roles without warm paths, and no key is made |
| ` + "`PEPSAL_REFERENCE_BIN`" + ` | built | a PEPsal 2.x binary for the reference rows (TPROXY recipe; installs iptables if missing); by default built like QPEP (below) for the satellite and page-load tables; relay efficiency has its row only when this is set |
| ` + "`PEPSAL_BENCH_TIMEOUT`" + ` | 90s (quick: 30s) | a transfer still running then is stopped and shown as "> 90 s" |
| ` + "`PEPSAL_BENCH_PARTS`" + ` | ` + "`satellite efficiency web`" + ` | which parts to run; ` + "`veth`" + ` is efficiency without the memory test, ` + "`web`" + ` the page loads in Chromium |
| ` + "`PEPSAL_BENCH_QPEP_BIN`" + ` | built | a QPEP binary for the page-load rows; by default built (with PEPsal 2.0.2) from ` + "`PEPSAL_BENCH_REF_SRC`" + ` (` + "`../shared/reference`" + `) into ` + "`PEPSAL_BENCH_REF_CACHE`" + ` (` + "`/var/cache/pepsal-bench-ref`" + `) |
| ` + "`PEPSAL_BENCH_PARALLEL`" + ` | 0 (all) | satellite tables measured at the same time |
| ` + "`PEPSAL_BENCH_SERVER_CC`" + ` | ` + "`cubic`" + ` | congestion control of the server's sockets |
| ` + "`PEPSAL_DEMO_RUNS`" + ` | 3 | runs of ` + "`make demo`" + ` |

Without ` + "`PEPSAL_BENCH_ARGS`" + `, the router of the gateway-PEP and plain beds runs pepsal's defaults (` + "`make demo`" + `:
` + "`--role gateway`" + `), and the two-PEP bed runs README's headline setup: ` + "`--role terminal --peer 10.78.3.2:7700 --peer-key KEY`" + `
on the terminal, ` + "`--role gateway --fastopen-from 10.78.3.1 --fastopen-from fd78:3::1 --peer-listen 10.78.3.2:7700 --peer-key KEY`" + `
on the gateway, where KEY is 32 random bytes (hex) that the bench writes to a private temporary file
(mode 600) and removes at the end; before measuring it waits until the terminal's pool of warm connections
is full. Those rows are named *warm paths*. The page-load bench always gives its pepsals their role
(and the two-PEP gateway its ` + "`--fastopen-from`" + `), then the variables' arguments or the warm paths.

## Method

- Test beds are network namespaces joined by veth pairs, built over netlink
  (` + "`tests/testbed`" + `). The satellite link is the userspace emulator of
  ` + "`tests/linkemu`" + ` (this kernel has no netem): delay, rate with a one-BDP
  tail-drop queue, Bernoulli loss. *gateway PEP*: client -- link -- router --
  server, pepsal on the router intercepting on the link side. *two PEPs*:
  client -- terminal -- link -- gateway -- server, pepsal on the terminal
  (client side) and on the gateway (link side), with warm paths between them
  (above).
- Traffic is the project's own Go client and server (` + "`tests/bench`" + `). The
  server's sockets use CUBIC (TCP_CONGESTION), as servers on the Internet do;
  clients and pepsal keep the kernel default. A download is timed from the
  start of the client's connect() to the last byte; an upload to the server's
  reply that it read every byte. First byte: connect() to the first byte of the
  100 KB download. Every byte count is checked; a wrong count is a failure,
  never a sample.
- Every mode of a table has its own identical test bed, and the beds of one
  table run each transfer at the same time, so a run compares the modes under
  the same machine load; xN is the median of no proxy divided by the median of
  the row (above 1: faster). Tables of different profiles run in parallel: a
  satellite link leaves the CPU mostly idle. The reference PEPsal row runs
  PEPsal 2.x with its TPROXY recipe on the router, and on both the terminal
  and the gateway in the two-PEP tables.
- Relay efficiency runs alone on the machine: downloads over bare veth for a
  fixed time, CPU from the machine-wide /proc/stat (all non-idle time,
  softirq and kernel workers included, so is the traffic generator: compare
  rows, not absolute values), a 64-byte echo for latency, and memory with a
  server sending as fast as it can to a client behind a 10 Mbit/s link.

`
