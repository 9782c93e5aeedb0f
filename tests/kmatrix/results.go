// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Outcome of one test on one kernel.
type Outcome string

const (
	Pass Outcome = "PASS"
	Fail Outcome = "FAIL"
	Skip Outcome = "SKIP"
	// NotRun: the test never reported (its group crashed or the VM died).
	NotRun Outcome = "-"
)

// Result is one test (or subtest) of one group's run.
type Result struct {
	Test    string  `json:"test"` // TestX or TestX/sub/...
	Outcome Outcome `json:"outcome"`
	Seconds float64 `json:"seconds"`
	// Why: a skip's or a failure's first line, a timeout, a crash.
	Why string `json:"why,omitempty"`
}

var (
	resultLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)
	// "=== RUN   TestX/sub": the lines that follow are that test's (CONT
	// and NAME say the same when tests interleave).
	switchLine = regexp.MustCompile(`^=== (?:RUN|CONT|NAME)\s+(\S+)`)
	// "    file_test.go:12: message": what t.Log, t.Error, t.Skip wrote.
	logLine = regexp.MustCompile(`^\s+[\w.-]+\.go:\d+: (.*)`)
)

// failMessages is how many of a failed test's messages its Why keeps.
const failMessages = 4

// ParseVerbose reads `go test -v` output: one Result per "--- PASS/FAIL/SKIP"
// line, in order. A skip's Why is the first message the test logged
// (written before its result line, as Go streams it, or indented under it);
// a failure's, its first few messages, for the error often follows a
// t.Log of the setup (the daemon's output, logged at the end, left out). A group whose process timed out or crashed leaves its
// unfinished tests out; Settle accounts for them.
func ParseVerbose(r io.Reader) ([]Result, error) {
	var out []Result
	msgs := map[string][]string{} // test -> its first messages
	current := ""
	var lastResult string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := switchLine.FindStringSubmatch(line); m != nil {
			current, lastResult = m[1], ""
			continue
		}
		if m := resultLine.FindStringSubmatch(line); m != nil {
			var secs float64
			fmt.Sscanf(m[4], "%g", &secs)
			out = append(out, Result{Test: m[3], Outcome: Outcome(m[2]), Seconds: secs})
			lastResult = m[3]
			continue
		}
		if m := logLine.FindStringSubmatch(line); m != nil {
			owner := current
			if lastResult != "" {
				owner = lastResult // indented under a result line
			}
			if owner != "" && len(msgs[owner]) < failMessages && !strings.HasPrefix(m[1], "pepsal output") {
				msgs[owner] = append(msgs[owner], m[1])
			}
		}
	}
	for i := range out {
		m := msgs[out[i].Test]
		switch {
		case len(m) == 0 || out[i].Outcome == Pass:
		case out[i].Outcome == Fail:
			out[i].Why = strings.Join(m, " | ")
		default:
			out[i].Why = m[0]
		}
	}
	return out, sc.Err()
}

// Settle completes a group's results from how its process ended: a group
// that did not exit 0 and reported no failure (a timeout, a panic, a killed
// VM) gets a failure on its named top-level tests that did not report.
func Settle(results []Result, group []string, exitCode int, why string) []Result {
	reported := map[string]bool{}
	failed := false
	for _, r := range results {
		reported[r.Test] = true
		failed = failed || r.Outcome == Fail
	}
	for _, name := range group {
		if reported[name] {
			continue
		}
		switch {
		case exitCode == 0:
			// A test not selected by this kernel's binary: nothing to say.
		case failed:
			results = append(results, Result{Test: name, Outcome: NotRun, Why: why})
		default:
			results = append(results, Result{Test: name, Outcome: Fail, Why: why})
		}
	}
	return results
}

// Run is one kernel's results.
type Run struct {
	Kernel   string        `json:"kernel"`  // label, e.g. "6.1"
	Release  string        `json:"release"` // uname -r in the VM
	Version  string        `json:"version"` // /proc/version in the VM
	Package  string        `json:"package"` // the Debian package it came from
	Accel    string        `json:"accel"`   // kvm or tcg
	Duration time.Duration `json:"duration"`
	Results  []Result      `json:"results"`
	// Error: the VM did not run the plan to its end.
	Error string `json:"error,omitempty"`
}

func (r *Run) outcome(test string) (Outcome, string) {
	for _, res := range r.Results {
		if res.Test == test {
			return res.Outcome, res.Why
		}
	}
	return NotRun, ""
}

// Failures lists the tests that failed on this kernel.
func (r *Run) Failures() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Outcome == Fail {
			out = append(out, res)
		}
	}
	return out
}

// Table writes test x kernel: every top-level test, and every subtest that
// did not pass on every kernel; then the skips' and failures' reasons, and
// each kernel's totals and time.
func Table(w io.Writer, runs []*Run) {
	tests := map[string]bool{}
	for _, r := range runs {
		for _, res := range r.Results {
			tests[res.Test] = true
		}
	}
	var rows []string
	for t := range tests {
		top := !strings.Contains(t, "/")
		allPass := true
		for _, r := range runs {
			if o, _ := r.outcome(t); o != Pass {
				allPass = false
			}
		}
		if top || !allPass {
			rows = append(rows, t)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return lessTestName(rows[i], rows[j]) })
	width := len("test")
	for _, t := range rows {
		width = max(width, len(t))
	}
	fmt.Fprintf(w, "%-*s", width, "test")
	for _, r := range runs {
		fmt.Fprintf(w, "  %-6s", r.Kernel)
	}
	fmt.Fprintln(w)
	for _, t := range rows {
		fmt.Fprintf(w, "%-*s", width, t)
		for _, r := range runs {
			o, _ := r.outcome(t)
			fmt.Fprintf(w, "  %-6s", o)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, r := range runs {
		counts := map[Outcome]int{}
		for _, res := range r.Results {
			counts[res.Outcome]++
		}
		fmt.Fprintf(w, "%s: %s (%s, %s): %d passed, %d failed, %d skipped, %d not run, in %s",
			r.Kernel, r.Release, r.Package, r.Accel, counts[Pass], counts[Fail], counts[Skip], counts[NotRun], r.Duration.Round(time.Second))
		if r.Error != "" {
			fmt.Fprintf(w, "; VM: %s", r.Error)
		}
		fmt.Fprintln(w)
	}
	// Why a test failed, or why it did not do the same on every kernel.
	for _, t := range rows {
		first, _ := runs[0].outcome(t)
		same := true
		for _, r := range runs {
			if o, _ := r.outcome(t); o != first || o == Fail {
				same = false
			}
		}
		if same {
			continue
		}
		for _, r := range runs {
			if o, why := r.outcome(t); o != Pass && why != "" {
				fmt.Fprintf(w, "  %s on %s: %s: %s\n", o, r.Kernel, t, why)
			}
		}
	}
}

// lessTestName orders a subtest right after its parent.
func lessTestName(a, b string) bool {
	return strings.ReplaceAll(a, "/", "\x00") < strings.ReplaceAll(b, "/", "\x00")
}
