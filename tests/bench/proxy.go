// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// Site is a router namespace where a PEP runs and the interface on which it
// intercepts.
type Site struct {
	Name  string // "router", "terminal", "gateway"
	NS    *testbed.NS
	Iface string
}

// Mode is one row of a table: how the test bed relays TCP.
type Mode struct {
	Name      string // row label
	Relay     string // pepsal --relay; "" with Reference false: no proxy
	Reference bool   // the reference PEPsal through TPROXY
}

// Proxied tells whether the mode runs a PEP.
func (m Mode) Proxied() bool { return m.Relay != "" || m.Reference }

// NoProxy is the routed baseline.
var NoProxy = Mode{Name: "no proxy"}

// Daemon is a proxy (or another program of the bench) running at a site.
type Daemon struct {
	*harness.Process
	Site Site
	PID  int                   // the proxy itself, not nsenter
	undo func(context.Context) // removes what the start changed in the namespace
	bin  string
	ref  bool
}

const (
	stopTimeout = 10 * time.Second
	// refPort is the reference PEPsal's default listening port.
	refPort = "5000"
)

// launchOpts keep the output's tail only, so a long run cannot grow it, and
// give the program its own process group: a Ctrl-C on the terminal reaches
// the benchmark, which stops it in order, not the program first.
var launchOpts = harness.Options{OwnGroup: true, Tail: 16 << 10}

// launch starts a program at site.
func launch(site Site, bin string, args ...string) (*Daemon, error) {
	p, err := harness.Launch(site.NS, launchOpts, bin, args...)
	if err != nil {
		return nil, err
	}
	return &Daemon{Process: p, Site: site, PID: p.PID(), bin: bin}, nil
}

// StartPepsal runs `pepsal run --iface IF --relay R [extra...]` at site and
// waits until `pepsal status` says it serves. A daemon that exits first is
// reported with the last line it printed, its error message.
func StartPepsal(ctx context.Context, bin string, site Site, relay string, extra []string) (*Daemon, error) {
	args := append([]string{"--iface", site.Iface, "--relay", relay}, extra...)
	p, err := harness.StartPepsal(ctx, site.NS, bin, launchOpts, args...)
	if err != nil {
		// The daemon detaches when it stops; this also covers a SIGKILL.
		_ = exec.CommandContext(ctx, "nsenter", "--net="+site.NS.Path(), "--", bin, "detach").Run()
		if errors.Is(err, harness.ErrExited) {
			return nil, fmt.Errorf("%s", lastLine(p.Output(), p.Err()))
		}
		if p != nil && errors.Is(err, harness.ErrNotReady) {
			return nil, fmt.Errorf("not serving after %s: %s", harness.StartTimeout, lastLine(p.Output(), nil))
		}
		return nil, err
	}
	d := &Daemon{Process: p, Site: site, PID: p.PID(), bin: bin}
	d.undo = func(ctx context.Context) {
		_ = exec.CommandContext(ctx, "nsenter", "--net="+site.NS.Path(), "--", bin, "detach").Run()
	}
	if st, err := d.Status(); err == nil && st.Daemon != nil && st.Daemon.PID > 0 {
		d.PID = st.Daemon.PID
	} else {
		d.PID = realPID(d.PID)
	}
	return d, nil
}

// Status asks the pepsal daemon of the site for its state.
func (d *Daemon) Status() (report.StatusReport, error) {
	if d.ref {
		return report.StatusReport{}, errors.New("the reference PEPsal has no status command")
	}
	return harness.Status(d.Site.NS, d.bin)
}

// Stop ends the daemon (SIGTERM, then SIGKILL) and undoes its setup. It is
// safe to call twice.
func (d *Daemon) Stop() {
	d.Process.Stop(syscall.SIGTERM, stopTimeout)
	if d.undo != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.undo(ctx)
		cancel()
		d.undo = nil
	}
}

// waitReady polls ready for up to harness.StartTimeout. A daemon that exits
// first is reported with the last line it printed; a timeout with late().
// Either way the daemon is stopped.
func (d *Daemon) waitReady(ctx context.Context, ready func() bool, late func() string) error {
	err := d.WaitReady(ctx, harness.StartTimeout, ready)
	if err == nil {
		return nil
	}
	d.Stop()
	switch {
	case errors.Is(err, harness.ErrExited):
		return fmt.Errorf("%s", lastLine(d.Output(), d.Err()))
	case errors.Is(err, harness.ErrNotReady):
		return errors.New(late())
	}
	return err
}

// StartReference runs the reference PEPsal at site with its documented
// TPROXY recipe (policy routing for mark 1 and an iptables mangle rule).
func StartReference(ctx context.Context, bin string, site Site) (*Daemon, error) {
	ns := site.NS
	setup := [][]string{
		{"ip", "rule", "add", "fwmark", "1", "lookup", "100"},
		{"ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
		{"iptables", "-t", "mangle", "-A", "PREROUTING", "-i", site.Iface, "-p", "tcp",
			"-j", "TPROXY", "--on-port", refPort, "--tproxy-mark", "1"},
	}
	teardown := [][]string{
		{"iptables", "-t", "mangle", "-D", "PREROUTING", "-i", site.Iface, "-p", "tcp",
			"-j", "TPROXY", "--on-port", refPort, "--tproxy-mark", "1"},
		{"ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
		{"ip", "rule", "del", "fwmark", "1", "lookup", "100"},
	}
	undo := func(ctx context.Context) {
		for _, c := range teardown {
			_ = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.Path(), "--"}, c...)...).Run()
		}
	}
	for _, c := range setup {
		if out, err := ns.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			undo(ctx)
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	d, err := launch(site, bin, "-p", refPort)
	if err != nil {
		undo(ctx)
		return nil, err
	}
	d.ref, d.undo = true, undo
	// Not a test connection: PEPsal would proxy a local one to itself.
	listening := func() bool {
		out, _ := ns.Command("ss", "-Hltn", "sport = :"+refPort).Output()
		return len(bytes.TrimSpace(out)) > 0
	}
	if err := d.waitReady(ctx, listening,
		func() string { return fmt.Sprintf("not listening on port %s after %s", refPort, harness.StartTimeout) }); err != nil {
		return nil, err
	}
	d.PID = realPID(d.PID)
	return d, nil
}

// EnsureIptables installs iptables with apt-get when it is missing; only the
// reference PEPsal needs it.
func EnsureIptables(ctx context.Context) error {
	if _, err := exec.LookPath("iptables"); err == nil {
		return nil
	}
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", "iptables")
		cmd.Env = append(cmd.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get install iptables: %w: %s", err, lastLine(string(out), nil))
		}
		return nil
	}
	if install() == nil {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w: %s", err, lastLine(string(out), nil))
	}
	return install()
}

// StartProxies starts the mode's PEP at every site and waits for a
// terminal's warm paths; on a failure the ones already started are stopped.
// No proxy: nothing to start.
func StartProxies(ctx context.Context, cfg Config, m Mode, sites []Site) ([]*Daemon, error) {
	if !m.Proxied() {
		return nil, nil
	}
	var ds []*Daemon
	for _, s := range sites {
		var (
			d   *Daemon
			err error
		)
		if m.Reference {
			d, err = StartReference(ctx, cfg.ReferenceBin, s)
		} else {
			d, err = StartPepsal(ctx, cfg.Pepsal, s, m.Relay, cfg.argsFor(s.Name))
		}
		if err != nil {
			StopAll(ds)
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		ds = append(ds, d)
	}
	if err := waitWarm(ctx, ds); err != nil {
		StopAll(ds)
		return nil, err
	}
	return ds, nil
}

// StopAll stops daemons in reverse order of start.
func StopAll(ds []*Daemon) {
	for i := len(ds) - 1; i >= 0; i-- {
		ds[i].Stop()
	}
}

// lastLine is the last non-empty line of a program's output (its error
// message), or the exit status when it printed nothing.
func lastLine(out string, exitErr error) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if l == "" {
		if exitErr != nil {
			return "exited: " + exitErr.Error()
		}
		return "no output"
	}
	const maxLen = 200
	if len(l) > maxLen {
		l = l[:maxLen] + "..."
	}
	return l
}
