// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Plan is what the runner in the VM does: the host writes it, the guest
// reads it through the shared directory.
type Plan struct {
	Out    string   `json:"out"`
	Env    []string `json:"env"` // added to every group's environment
	Groups []Group  `json:"groups"`
}

// Group is one process: a test binary run with -test.run Run in Dir.
type Group struct {
	Name    string        `json:"name"` // its log: Out/logs/Name.log
	Binary  string        `json:"binary"`
	Dir     string        `json:"dir"`
	Run     string        `json:"run"`
	Tests   []string      `json:"tests"` // the top-level tests Run selects
	Timeout time.Duration `json:"timeout"`
}

// GuestReport is what the runner writes to Out/results.json, after each
// group (a VM that dies keeps what was done).
type GuestReport struct {
	Release string `json:"release"`
	Version string `json:"version"` // /proc/version: the distribution's package version

	Groups []GroupReport `json:"groups"`
	Done   bool          `json:"done"`
}

// GroupReport is one group's outcome.
type GroupReport struct {
	Name    string   `json:"name"`
	Seconds float64  `json:"seconds"`
	Exit    int      `json:"exit"`
	Results []Result `json:"results"`
}

// RunGuest carries out a plan, in the VM.
func RunGuest(planFile string) error {
	data, err := os.ReadFile(planFile)
	if err != nil {
		return err
	}
	var plan Plan
	if err := json.Unmarshal(data, &plan); err != nil {
		return fmt.Errorf("plan %s: %w", planFile, err)
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	rep := GuestReport{Release: unix.ByteSliceToString(u.Release[:])}
	if v, err := os.ReadFile("/proc/version"); err == nil {
		rep.Version = strings.TrimSpace(string(v))
	}
	logs := filepath.Join(plan.Out, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	for _, g := range plan.Groups {
		fmt.Printf("== %s: %s -test.run %s\n", g.Name, filepath.Base(g.Binary), g.Run)
		gr := runGroup(g, plan.Env, filepath.Join(logs, g.Name+".log"))
		fmt.Printf("   exit %d after %.0fs\n", gr.Exit, gr.Seconds)
		rep.Groups = append(rep.Groups, gr)
		if err := writeJSON(filepath.Join(plan.Out, "results.json"), rep); err != nil {
			return err
		}
	}
	rep.Done = true
	return writeJSON(filepath.Join(plan.Out, "results.json"), rep)
}

// runGroup runs one test process; a process still alive a minute after its
// own -test.timeout is killed.
func runGroup(g Group, env []string, logFile string) GroupReport {
	start := time.Now()
	gr := GroupReport{Name: g.Name}
	ctx, cancel := context.WithTimeout(context.Background(), g.Timeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.Binary, "-test.v", "-test.count=1", "-test.timeout="+g.Timeout.String(), "-test.run", g.Run)
	cmd.Dir = g.Dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	gr.Seconds = time.Since(start).Seconds()
	_ = os.WriteFile(logFile, out.Bytes(), 0o644)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		gr.Exit = ee.ExitCode()
	default:
		gr.Exit = -1
	}
	why := fmt.Sprintf("the process ended with status %d (%s)", gr.Exit, filepath.Base(logFile))
	if i := bytes.Index(out.Bytes(), []byte("panic: test timed out")); i >= 0 {
		why = fmt.Sprintf("timed out after %s (%s)", g.Timeout, filepath.Base(logFile))
	} else if err != nil && !errors.As(err, &ee) {
		why = err.Error()
	}
	results, _ := ParseVerbose(&out)
	gr.Results = Settle(results, g.Tests, gr.Exit, why)
	return gr
}

func writeJSON(file string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := file + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// safeName makes a test or package name usable as a file name.
func safeName(s string) string {
	return strings.NewReplacer("/", "-", " ", "_", "^", "", "$", "", "(", "", ")", "", "|", "+").Replace(s)
}
