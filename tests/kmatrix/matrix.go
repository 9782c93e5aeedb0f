// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Options of a matrix run, on the host.
type Options struct {
	Kernels []Kernel
	Module  string // the repository (go.mod's directory)
	Cache   string // downloads, unpacked kernels (kept between runs)
	Out     string // this run: binaries, per-kernel logs and results, the table
	// Tests selects top-level tests by name (nil: all).
	Tests *regexp.Regexp
	// PerTest lists the packages whose top-level tests each run in their
	// own process (long integration tests: a hang costs one test); the
	// others run whole, one process per package.
	PerTest      []string
	GroupTimeout time.Duration
	Accel        string
	CPUs         int
	Memory       string
	Log          func(string, ...any)
}

// Binaries are what the host builds once for every kernel.
type Binaries struct {
	Pepsal string
	Runner string
	Groups []Group // Dir, Binary, Run, Tests; Name and Timeout set here too
}

// Build compiles pepsal, every package's test binary and a copy of the
// runner into Out/bin, and groups the tests Options select.
func Build(o Options) (*Binaries, error) {
	bin := filepath.Join(o.Out, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, err
	}
	b := &Binaries{Pepsal: filepath.Join(bin, "pepsal"), Runner: filepath.Join(bin, "pepsal-kernels")}
	if err := goCmd(o.Module, "build", "-o", b.Pepsal, "./cmd/pepsal"); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := copyFile(self, b.Runner); err != nil {
		return nil, err
	}
	list, err := goOutput(o.Module, "list", "-f", "{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}", "./...")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		pkg, dir, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		rel, err := filepath.Rel(o.Module, dir)
		if err != nil {
			return nil, err
		}
		name := safeName(rel)
		testBin := filepath.Join(bin, name+".test")
		o.Log("building %s", testBin)
		if err := goCmd(o.Module, "test", "-c", "-o", testBin, pkg); err != nil {
			return nil, err
		}
		names, err := listTests(testBin, dir)
		if err != nil {
			return nil, err
		}
		var tests []string
		for _, t := range names {
			if o.Tests == nil || o.Tests.MatchString(t) {
				tests = append(tests, t)
			}
		}
		if len(tests) == 0 {
			continue
		}
		if slices.Contains(o.PerTest, rel) {
			for _, t := range tests {
				b.Groups = append(b.Groups, Group{Name: name + "." + t, Binary: testBin, Dir: dir, Run: "^" + t + "$", Tests: []string{t}, Timeout: o.GroupTimeout})
			}
			continue
		}
		b.Groups = append(b.Groups, Group{Name: name, Binary: testBin, Dir: dir, Run: "^(" + strings.Join(tests, "|") + ")$", Tests: tests, Timeout: o.GroupTimeout})
	}
	if len(b.Groups) == 0 {
		return nil, errors.New("no test selected")
	}
	return b, nil
}

// listTests is a test binary's top-level tests.
func listTests(testBin, dir string) ([]string, error) {
	cmd := exec.Command(testBin, "-test.list", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -test.list: %w", testBin, err)
	}
	var names []string
	for _, l := range strings.Fields(string(out)) {
		if strings.HasPrefix(l, "Test") {
			names = append(names, l)
		}
	}
	return names, nil
}

// RunKernel boots one kernel and runs every group in it.
func RunKernel(ctx context.Context, o Options, k Kernel, b *Binaries) *Run {
	start := time.Now()
	run := &Run{Kernel: k.Label, Accel: o.Accel}
	defer func() { run.Duration = time.Since(start) }()
	p, err := Prepare(k, o.Cache, o.Log)
	if err != nil {
		run.Error = strings.Join(strings.Fields(err.Error()), " ")
		return run
	}
	run.Package, run.Release = p.Package, p.Release
	out := filepath.Join(o.Out, safeName(k.Label))
	if err := os.RemoveAll(out); err != nil {
		run.Error = err.Error()
		return run
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		run.Error = err.Error()
		return run
	}
	plan := Plan{Out: out, Env: []string{"PEPSAL_TEST_BINARY=" + b.Pepsal}, Groups: b.Groups}
	if o.Accel == "tcg" {
		plan.Env = append(plan.Env, EmulatedEnv+"=tcg")
	}
	if err := writeJSON(filepath.Join(out, "plan.json"), plan); err != nil {
		run.Error = err.Error()
		return run
	}
	env := fmt.Sprintf("MODULES=%s\nNOFILE=%d\nRUNNER=%s\nPLAN=%s\n", shellQuote(p.Modules), nofileLimit(), shellQuote(b.Runner), shellQuote(filepath.Join(out, "plan.json")))
	if err := os.WriteFile(filepath.Join(out, "guest.env"), []byte(env), 0o644); err != nil {
		run.Error = err.Error()
		return run
	}
	// The VM's own deadline: every group's timeout, and boot.
	limit := time.Duration(len(b.Groups))*(o.GroupTimeout+time.Minute) + 5*time.Minute
	vctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	o.Log("kernel %s (%s, %s): booting under %s, %d groups", k.Label, p.Release, p.Package, o.Accel, len(b.Groups))
	vm := VM{Kernel: p, Out: out, Accel: o.Accel, CPUs: o.CPUs, Memory: o.Memory}
	bootErr := vm.Boot(vctx)
	rep, err := readReport(filepath.Join(out, "results.json"))
	switch {
	case err != nil && bootErr != nil:
		run.Error = fmt.Sprintf("%v; no results: %v", bootErr, err)
	case err != nil:
		run.Error = fmt.Sprintf("no results (%v): %s", err, lastLine(filepath.Join(out, "guest.log"), filepath.Join(out, "console.log")))
	case !rep.Done:
		run.Error = "the runner did not finish"
		if bootErr != nil {
			run.Error += ": " + bootErr.Error()
		}
	}
	if rep != nil {
		run.Release, run.Version = rep.Release, rep.Version
		done := map[string]bool{}
		for _, g := range rep.Groups {
			run.Results = append(run.Results, g.Results...)
			done[g.Name] = true
		}
		for _, g := range b.Groups {
			if !done[g.Name] {
				for _, t := range g.Tests {
					run.Results = append(run.Results, Result{Test: t, Outcome: NotRun, Why: "the VM ended before it ran"})
				}
			}
		}
	}
	return run
}

func readReport(file string) (*GuestReport, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var rep GuestReport
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Verdict is nil when every test passed or skipped on every kernel.
func Verdict(runs []*Run) error {
	var bad []string
	for _, r := range runs {
		if r.Error != "" {
			bad = append(bad, fmt.Sprintf("%s: %s", r.Kernel, r.Error))
		}
		for _, res := range r.Results {
			if res.Outcome == Fail || res.Outcome == NotRun {
				bad = append(bad, fmt.Sprintf("%s: %s %s", r.Kernel, res.Outcome, res.Test))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d problems: %s", len(bad), strings.Join(bad, "; "))
	}
	return nil
}

func goCmd(dir string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func goOutput(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// shellQuote quotes s for stage 2's `. guest.env`.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// lastLine is the last line of the first of files that has one: what a VM
// that gave no results said last.
func lastLine(files ...string) string {
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
			return fmt.Sprintf("%s says %q", filepath.Base(f), l)
		}
	}
	return "the VM said nothing"
}
