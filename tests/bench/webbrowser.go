// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/testbed"
)

// browserBins are tried in order: Debian's headless shell, then the full
// browser in headless mode.
var browserBins = []string{"chromium-headless-shell", "chromium"}

// FindBrowser returns the Chromium binary to run and its version line.
func FindBrowser() (bin, version string, err error) {
	for _, b := range browserBins {
		p, err := exec.LookPath(b)
		if err != nil {
			continue
		}
		out, err := exec.Command(p, "--version").Output()
		if err != nil {
			return "", "", fmt.Errorf("%s --version: %w", p, err)
		}
		return p, strings.TrimSpace(string(out)), nil
	}
	return "", "", errors.New("no Chromium found (apt-get install chromium-headless-shell; make bench installs it)")
}

// Timing is what the page's script read from the browser after the load event.
type Timing struct {
	TTFB      time.Duration // responseStart - navigationStart
	Load      time.Duration // loadEventStart - navigationStart
	Resources int           // sub-resources with a body
	Bytes     int64         // their decoded body bytes
	Protocols []string      // nextHopProtocol of the document and sub-resources, sorted
}

const timingMark = "PEPSAL-TIMING "

// ErrNoTiming: the dumped page has no timing line; the load event never fired.
var ErrNoTiming = errors.New("no timing in the page: the load event did not fire")

// ParseTiming reads the line the page's script wrote into the DOM.
func ParseTiming(dom string) (Timing, error) {
	var t Timing
	i := strings.Index(dom, timingMark)
	if i < 0 {
		return t, ErrNoTiming
	}
	line := dom[i+len(timingMark):]
	if j := strings.IndexAny(line, "<\n"); j >= 0 {
		line = line[:j]
	}
	seen := map[string]bool{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return t, fmt.Errorf("timing: bad field %q", f)
		}
		if seen[k] {
			return t, fmt.Errorf("timing: %s twice", k)
		}
		seen[k] = true
		switch k {
		case "ttfb", "load":
			ms, err := strconv.ParseFloat(v, 64)
			if err != nil || !(ms >= 0 && ms < 1e9) { // NaN fails both
				return t, fmt.Errorf("timing: %s=%q: want milliseconds", k, v)
			}
			d := time.Duration(ms * float64(time.Millisecond))
			if k == "ttfb" {
				t.TTFB = d
			} else {
				t.Load = d
			}
		case "resources":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return t, fmt.Errorf("timing: resources=%q: want a count", v)
			}
			t.Resources = n
		case "bytes":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return t, fmt.Errorf("timing: bytes=%q: want a count", v)
			}
			t.Bytes = n
		case "protocols":
			t.Protocols = strings.Split(v, ",")
			slices.Sort(t.Protocols)
		default:
			return t, fmt.Errorf("timing: unknown field %q", k)
		}
	}
	for _, k := range []string{"ttfb", "load", "resources", "bytes", "protocols"} {
		if !seen[k] {
			return t, fmt.Errorf("timing: %s missing", k)
		}
	}
	if t.Load < t.TTFB {
		return t, fmt.Errorf("timing: load %s before the first byte %s", t.Load, t.TTFB)
	}
	return t, nil
}

// Check tells whether a load got the whole page over the expected protocol.
func (t Timing) Check(p *Page, proto string) error {
	if t.Resources != len(p.Resources) || t.Bytes != p.SubBytes() {
		return fmt.Errorf("got %d resources, %d bytes; want %d, %d", t.Resources, t.Bytes, len(p.Resources), p.SubBytes())
	}
	if len(t.Protocols) != 1 || t.Protocols[0] != proto {
		return fmt.Errorf("protocols %s, want %s only", strings.Join(t.Protocols, ","), proto)
	}
	return nil
}

// LoadPage runs a fresh headless Chromium (new empty profile: no cache, no
// session) in ns and returns the page's own timing. Real time: no virtual
// time budget; the browser stops the load after timeout, which then has no
// timing and is reported as context.DeadlineExceeded.
func LoadPage(ctx context.Context, ns *testbed.NS, browser, url string, timeout time.Duration) (Timing, error) {
	prof, err := os.MkdirTemp("", "pepsal-web-profile-")
	if err != nil {
		return Timing{}, err
	}
	defer os.RemoveAll(prof)
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-proxy-server", "--ignore-certificate-errors", "--disable-dev-shm-usage",
		"--user-data-dir=" + prof,
		fmt.Sprintf("--timeout=%d", timeout.Milliseconds()),
		"--dump-dom", url,
	}
	cmd := ns.Command(browser, args...)
	out, errOut := harness.TailBuffer{Max: 1 << 20}, harness.TailBuffer{Max: 4 << 10}
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// Own group: the wrapper script, the browser and its helpers go together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Timing{}, fmt.Errorf("start %s: %w", browser, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(timeout + 30*time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return Timing{}, fmt.Errorf("browser hung: %w", context.DeadlineExceeded)
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return Timing{}, ctx.Err()
	}
	// Helpers left behind by a crash must not outlive the load.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	t, err := ParseTiming(out.String())
	if errors.Is(err, ErrNoTiming) {
		if time.Since(start) >= timeout {
			return t, fmt.Errorf("no load event after %s: %w", timeout, context.DeadlineExceeded)
		}
		if werr != nil {
			return t, fmt.Errorf("%s: %w: %s", browser, werr, lastLine(errOut.String(), nil))
		}
	}
	return t, err
}
