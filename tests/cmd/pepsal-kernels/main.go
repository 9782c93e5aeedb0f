// SPDX-License-Identifier: Apache-2.0

// Command pepsal-kernels runs pepsal's test suites under other Linux kernels
// (tests/kmatrix): each kernel boots under qemu with this machine's root
// file system shared read-only, runs the test binaries built here, and one
// table of test x kernel is printed at the end.
//
//	pepsal-kernels [--kernels 6.1,6.12,6.18] [--tests REGEXP] [--out DIR] run
//	pepsal-kernels --plan FILE guest    (inside the VM: the runner)
//
// Exit status: 0 when every selected test passed or skipped on every
// kernel, 1 otherwise, 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/kmatrix"
)

func main() {
	err := run()
	var usage usageError
	switch {
	case err == nil:
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "pepsal-kernels:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "pepsal-kernels:", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func run() error {
	var defaults []string
	for _, k := range kmatrix.DefaultKernels {
		defaults = append(defaults, k.Label)
	}
	kernels := flag.String("kernels", strings.Join(defaults, ","), "kernels: a default's label, LABEL=PACKAGE-REGEXP (newest matching Debian package) or LABEL=IMAGE.deb+MODULES.deb")
	tests := flag.String("tests", "", "top-level tests to run (regexp on their names; default: all)")
	out := flag.String("out", "", "directory for this run's binaries, logs and table (default: a new one under /tmp)")
	cache := flag.String("cache", "/var/cache/pepsal-kernels", "downloads and unpacked kernels, kept between runs")
	groupTimeout := flag.Duration("group-timeout", 40*time.Minute, "time a test process may take in the VM")
	memory := flag.String("memory", "4G", "the VM's memory")
	cpus := flag.Int("cpus", 2, "the VM's CPUs")
	accel := flag.String("accel", "", "kvm or tcg (default: kvm where /dev/kvm can run a stock kernel)")
	plan := flag.String("plan", "", "guest: the plan to run")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: pepsal-kernels [flags] run | --plan FILE guest")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		return usageError{errors.New("want one command: run or guest")}
	}
	switch flag.Arg(0) {
	case "guest":
		if *plan == "" {
			return usageError{errors.New("guest needs --plan")}
		}
		return kmatrix.RunGuest(*plan)
	case "run":
	default:
		return usageError{fmt.Errorf("unknown command %q: want run or guest", flag.Arg(0))}
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the tests in the VM need it, and so do apt and the cache")
	}
	ks, err := kmatrix.ParseKernels(*kernels)
	if err != nil {
		return usageError{err}
	}
	var sel *regexp.Regexp
	if *tests != "" {
		if sel, err = regexp.Compile(*tests); err != nil {
			return usageError{fmt.Errorf("--tests: %w", err)}
		}
	}
	if *accel == "" {
		*accel = kmatrix.Accel()
	}
	module, err := moduleRoot()
	if err != nil {
		return err
	}
	if *out == "" {
		if *out, err = os.MkdirTemp("", "pepsal-kernels-"); err != nil {
			return err
		}
	}
	if *out, err = filepath.Abs(*out); err != nil {
		return err
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
	o := kmatrix.Options{Kernels: ks, Module: module, Cache: *cache, Out: *out, Tests: sel,
		PerTest: []string{"tests/integration"}, GroupTimeout: *groupTimeout, Accel: *accel, CPUs: *cpus, Memory: *memory, Log: logf}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := kmatrix.Build(o)
	if err != nil {
		return err
	}
	var runs []*kmatrix.Run
	for _, k := range ks {
		r := kmatrix.RunKernel(ctx, o, k, b)
		logf("kernel %s: %d results in %s%s", k.Label, len(r.Results), r.Duration.Round(time.Second), map[bool]string{true: "; " + r.Error, false: ""}[r.Error != ""])
		runs = append(runs, r)
		if ctx.Err() != nil {
			break
		}
	}
	var table strings.Builder
	kmatrix.Table(&table, runs)
	fmt.Print(table.String())
	if err := os.WriteFile(filepath.Join(*out, "matrix.txt"), []byte(table.String()), 0o644); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(runs, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "matrix.json"), data, 0o644); err != nil {
		return err
	}
	fmt.Printf("logs and results: %s\n", *out)
	return kmatrix.Verdict(runs)
}

// moduleRoot is the repository this command builds from: the directory of
// go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run it from the pepsal repository (no go.mod above the working directory)")
		}
		dir = parent
	}
}
