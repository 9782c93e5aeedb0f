// SPDX-License-Identifier: Apache-2.0

// Command pepsal-bench runs pepsal's benchmark suite or its demo on
// namespaced test beds with an emulated satellite link.
//
//	pepsal-bench [--pepsal bin/pepsal] [--out BENCHMARKS.md [--charts DIR]] bench
//	pepsal-bench [--pepsal bin/pepsal] demo
//
// Settings come from PEPSAL_BENCH_* variables (see BENCHMARKS.md). Ctrl-C
// stops the measurements and removes every namespace and pepsal attachment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/bench"
	"github.com/pepsal/pepsal/tests/harness"
)

func main() {
	err := run()
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "pepsal-bench: interrupted; test beds removed")
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "pepsal-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	pepsal := flag.String("pepsal", "bin/pepsal", "pepsal binary under test")
	out := flag.String("out", "", "bench: also write the report to this file (e.g. BENCHMARKS.md) and its charts; not in quick mode")
	charts := flag.String("charts", "", "bench: the charts' directory (default: "+bench.ChartDir+" beside --out)")
	verbose := flag.Bool("v", false, "debug logging")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: pepsal-bench [flags] bench|demo")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || (flag.Arg(0) != "bench" && flag.Arg(0) != "demo") {
		flag.Usage()
		return errors.New("want one command: bench or demo")
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the test beds need network namespaces and pepsal needs BPF")
	}
	if st, err := os.Stat(*pepsal); err != nil || st.IsDir() {
		return fmt.Errorf("pepsal binary %s not found (make build)", *pepsal)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := bench.ConfigFromEnv(os.LookupEnv)
	if err != nil {
		return err
	}
	cfg.Pepsal = *pepsal

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go interrupts(cancel)
	harness.SweepStaleBeds() // a run killed past its third Ctrl-C, or by SIGKILL
	// The two-PEP rows run warm paths under a key made for this run.
	removeKey, err := cfg.MakePeerKey()
	if err != nil {
		return err
	}
	defer removeKey()

	if flag.Arg(0) == "demo" {
		cfg.Runs = 3
		if v, ok := os.LookupEnv("PEPSAL_DEMO_RUNS"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 1 || n > 100 {
				return fmt.Errorf("PEPSAL_DEMO_RUNS=%q: want a count of 1 to 100", v)
			}
			cfg.Runs = n
		}
		start := time.Now()
		if err := bench.RunDemo(ctx, cfg, os.Stdout, log); err != nil {
			return err
		}
		if err := bench.RunWebDemo(ctx, cfg, os.Stdout, log); err != nil {
			return err
		}
		fmt.Printf("\ndemo took %s\n", time.Since(start).Round(time.Second))
		return nil
	}
	return runBench(ctx, cfg, *out, *charts, log)
}

// interrupts cancels on the first SIGINT/SIGTERM so that everything is torn
// down in order; a third one gives up on the clean-up.
func interrupts(cancel context.CancelFunc) {
	sig := make(chan os.Signal, 3)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for n := 1; ; n++ {
		<-sig
		switch n {
		case 1:
			fmt.Fprintln(os.Stderr, "\npepsal-bench: stopping, removing test beds and pepsal attachments...")
			cancel()
		case 2:
			fmt.Fprintln(os.Stderr, "pepsal-bench: still cleaning up; once more to quit at once (may leave namespaces behind)")
		default:
			os.Exit(130)
		}
	}
}

func runBench(ctx context.Context, cfg bench.Config, out, charts string, log *slog.Logger) error {
	if out != "" && filepath.Base(out) == bench.AnalysisFile {
		return fmt.Errorf("--out %s: that file is the hand-written analysis, the bench does not write it", out)
	}
	if out != "" && charts == "" {
		charts = filepath.Join(filepath.Dir(out), bench.ChartDir)
	}
	start := time.Now()
	si := bench.ReadSystemInfo()
	if cfg.Efficiency && cfg.ReferenceBin != "" {
		if err := bench.EnsureIptables(ctx); err != nil {
			return fmt.Errorf("reference PEPsal needs iptables: %w", err)
		}
	}
	res := bench.Results{}
	var err error
	// Efficiency first and alone: its CPU and memory counters are machine-wide.
	if cfg.Efficiency {
		if res.Eff, err = bench.RunEfficiency(ctx, cfg, log); err != nil {
			return err
		}
		for _, t := range res.Eff.Tables() {
			fmt.Println(t.Markdown())
		}
	}
	if cfg.Satellite {
		// The satellite tables' reference row: built from ../shared/reference
		// unless PEPSAL_REFERENCE_BIN names one; without either, "not run".
		// Efficiency (before) has it only when the variable is set.
		cfg.ReferenceBin, cfg.ReferenceMissing = bench.EnsureReference(ctx, cfg, os.Getenv, log)
		if cfg.ReferenceBin == "" {
			log.Warn("no reference PEPsal row", "reason", cfg.ReferenceMissing)
		}
		if res.Sat, err = bench.RunSatellite(ctx, cfg, bench.SatSpecs(cfg), log); err != nil {
			return err
		}
		for _, r := range res.Sat {
			fmt.Println(r.Table().Markdown())
		}
	}
	if cfg.Web {
		if res.Web, err = bench.RunWeb(ctx, cfg, log); err != nil {
			return err
		}
		for _, t := range res.Web.Tables {
			fmt.Println(t.Table().Markdown())
		}
	}
	res.Elapsed = time.Since(start)
	fmt.Printf("bench took %s\n", res.Elapsed.Round(time.Second))
	if out == "" {
		return nil
	}
	if cfg.Quick {
		// A quick run is for a look, not a record: keep the full results.
		fmt.Printf("quick mode: %s and its charts not written\n", out)
		return nil
	}
	return writeReport(cfg, si, res, out, charts)
}

// writeReport draws the charts, then writes the report that links them: a
// chart that cannot be drawn is an error, and the report is not written.
func writeReport(cfg bench.Config, si bench.SystemInfo, res bench.Results, out, charts string) error {
	var err error
	if res.Charts, err = bench.WriteCharts(charts, res.Sat, res.Web); err != nil {
		return fmt.Errorf("charts for %s: %w", out, err)
	}
	if res.ChartDir, err = filepath.Rel(filepath.Dir(out), charts); err != nil {
		return fmt.Errorf("charts directory %s: %w", charts, err)
	}
	if err := os.WriteFile(out, []byte(bench.Report(cfg, si, res)), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Printf("wrote %s and %d charts in %s\n", out, len(res.Charts), charts)
	return nil
}
