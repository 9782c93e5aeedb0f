// SPDX-License-Identifier: Apache-2.0

// Package harness builds pepsal and runs the long-lived processes of a test
// bed (pepsal itself, and the programs the benchmark compares it with) inside
// a namespace: one launcher for the integration tests and the benchmark, so
// both start, wait for, read and stop pepsal the same way.
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// Build compiles cmd/pepsal to out, with extra `go build` flags (-ldflags).
// By import path, so it works from any directory of the module.
func Build(out string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, "github.com/pepsal/pepsal/cmd/pepsal")
	if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("build pepsal: %w\n%s", err, b)
	}
	return nil
}

// BinaryEnv names a pepsal binary built beforehand, which RunWithBinary
// uses instead of building one (the kernel matrix builds once, on the host,
// for test binaries that run in a VM).
const BinaryEnv = "PEPSAL_TEST_BINARY"

// RunWithBinary is the body of a TestMain: it sweeps the test beds of killed
// runs, builds pepsal once into a temporary directory (or takes $BinaryEnv),
// sets *bin, runs the tests and removes the directory.
// It returns the exit code for os.Exit.
func RunWithBinary(m *testing.M, bin *string) int {
	SweepStaleBeds()
	if prebuilt := os.Getenv(BinaryEnv); prebuilt != "" {
		if _, err := os.Stat(prebuilt); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", BinaryEnv, err)
			return 1
		}
		*bin = prebuilt
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "pepsal-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*bin = filepath.Join(dir, "pepsal")
	if err := Build(*bin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// SweepStaleBeds removes the test beds of runs that were killed before
// their clean-up (testbed.SweepStale), saying so on stderr.
func SweepStaleBeds() {
	removed, err := testbed.SweepStale()
	if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "removed %d namespaces (and their pepsal pins) left by killed runs: %s\n", len(removed), strings.Join(removed, " "))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: stale test beds: %v\n", err)
	}
}

// StartTimeout bounds how long a process may take to become ready.
const StartTimeout = 15 * time.Second

var (
	// ErrExited: the process ended before it was ready.
	ErrExited = errors.New("exited before it was ready")
	// ErrNotReady: still not ready when the time ran out.
	ErrNotReady = errors.New("not ready")
)

// Options say how to launch a process.
type Options struct {
	// Wrapper runs the program (prlimit, setpriv): Wrapper[0] Wrapper[1:]... program args...
	Wrapper []string
	// OwnGroup gives the process its own process group, which Stop signals
	// whole: a Ctrl-C on the terminal then reaches the caller, which stops
	// the process in order, and not the process first.
	OwnGroup bool
	// DieWithParent kills the process when the test binary dies without its
	// cleanups (a timeout, a kill).
	DieWithParent bool
	// Tail keeps only the last Tail bytes of output, so a long run cannot
	// grow it; 0 keeps everything.
	Tail int
}

// Process is a program running in a namespace, its stdout and stderr kept.
type Process struct {
	Cmd   *exec.Cmd
	out   *TailBuffer
	done  chan struct{}
	err   error // exit status, valid once done is closed
	group bool
}

// Launch starts name with args inside ns. nsenter execs the program, so the
// process is the program itself.
func Launch(ns *testbed.NS, opts Options, name string, args ...string) (*Process, error) {
	if len(opts.Wrapper) > 0 {
		args = append(append(append([]string{}, opts.Wrapper[1:]...), name), args...)
		name = opts.Wrapper[0]
	}
	p := &Process{Cmd: ns.Command(name, args...), out: &TailBuffer{Max: opts.Tail}, done: make(chan struct{}), group: opts.OwnGroup}
	p.Cmd.Stdout, p.Cmd.Stderr = p.out, p.out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: opts.OwnGroup}
	if opts.DieWithParent {
		p.Cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	exit := make(chan error, 1)
	if err := StartLocked(p.Cmd, exit); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns.Name, err)
	}
	go func() {
		p.err = <-exit
		close(p.done)
	}()
	return p, nil
}

// StartLocked starts cmd and sends the result of its Wait on done. A
// Pdeathsig in cmd.SysProcAttr fires when the thread that forked the child
// exits, so that thread stays locked to this goroutine until Wait returns:
// the child then dies with the test binary, and only then.
func StartLocked(cmd *exec.Cmd, done chan<- error) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	return <-started
}

// StartPepsal runs `bin run args...` in ns and waits until `bin status`
// says it serves (exit 0). On an error the process is stopped; it is
// returned all the same once launched, for its output.
func StartPepsal(ctx context.Context, ns *testbed.NS, bin string, opts Options, args ...string) (*Process, error) {
	p, err := Launch(ns, opts, bin, append([]string{"run"}, args...)...)
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx, StartTimeout, func() bool { return ns.Command(bin, "status").Run() == nil }); err != nil {
		p.Stop(syscall.SIGTERM, 10*time.Second)
		return p, fmt.Errorf("pepsal run in %s: %w", ns.Name, err)
	}
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended; nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Output is what the process printed (its tail with Options.Tail).
func (p *Process) Output() string { return p.out.String() }

// WaitReady polls ready every 100 ms for up to timeout. It fails with
// ErrExited (wrapping the exit status) when the process ends first, with
// ErrNotReady at the timeout, and with ctx's error when ctx ends.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration, ready func() bool) error {
	for deadline := time.Now().Add(timeout); !ready(); time.Sleep(100 * time.Millisecond) {
		if p.Exited() {
			return fmt.Errorf("%w (%v)", ErrExited, p.err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", ErrNotReady, timeout)
		}
	}
	return nil
}

func (p *Process) signal(sig syscall.Signal) error {
	if p.group {
		return syscall.Kill(-p.Cmd.Process.Pid, sig)
	}
	return p.Cmd.Process.Signal(sig)
}

// Stop sends sig and waits up to wait for the process to end, then kills
// it; with OwnGroup whatever is left in its group (workers) goes too. It
// returns how the process ended (its exit status), or an error when it had
// to be killed. Safe to call again: it then returns the status.
func (p *Process) Stop(sig syscall.Signal, wait time.Duration) error {
	if p.group {
		defer syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	}
	if p.Exited() {
		return p.err
	}
	_ = p.signal(sig)
	select {
	case <-p.done:
		return p.err
	case <-time.After(wait):
		_ = p.signal(syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("did not exit within %s after %s", wait, sig)
	}
}

// Kill ends the process at once (a crash) and waits until it is gone.
func (p *Process) Kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil && !p.Exited() {
		return err
	}
	<-p.done
	return nil
}

// Status runs `bin status --json` in ns. The document is decoded whatever
// the exit code (status exits 3 when not serving, but still reports).
func Status(ns *testbed.NS, bin string) (report.StatusReport, error) {
	var st report.StatusReport
	return st, query(ns, bin, "status", &st)
}

// Conns runs `bin conns --json` in ns.
func Conns(ns *testbed.NS, bin string) ([]report.ConnInfo, error) {
	var cs []report.ConnInfo
	return cs, query(ns, bin, "conns", &cs)
}

func query(ns *testbed.NS, bin, what string, v any) error {
	var stderr bytes.Buffer
	cmd := ns.Command(bin, what, "--json")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if len(out) == 0 && err != nil {
		return fmt.Errorf("pepsal %s --json: %w: %s", what, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("pepsal %s --json: %w\n%s", what, err, out)
	}
	return nil
}

// TailBuffer keeps what is written to it, or its last Max bytes (Max > 0).
// Safe for concurrent use: a process's stdout and stderr may share one.
type TailBuffer struct {
	Max int
	mu  sync.Mutex
	b   []byte
}

func (o *TailBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b = append(o.b, p...)
	if o.Max > 0 && len(o.b) > o.Max {
		o.b = append(o.b[:0], o.b[len(o.b)-o.Max:]...)
	}
	return len(p), nil
}

func (o *TailBuffer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.b)
}
