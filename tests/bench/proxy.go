package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
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

// Daemon is a proxy process running in a namespace.
type Daemon struct {
	Site Site
	PID  int // the proxy itself, not nsenter
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error                 // exit status, valid once done is closed
	undo func(context.Context) // removes what the start changed in the namespace
	bin  string
	ref  bool
}

const (
	startTimeout = 15 * time.Second
	stopTimeout  = 10 * time.Second
	// refPort is the reference PEPsal's default listening port.
	refPort = "5000"
)

func (d *Daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// launch starts the program with its output kept (the tail only, so a long
// run cannot grow it). The proxy gets its own process group: a Ctrl-C on the
// terminal reaches the benchmark, which stops it in order, not the proxy first.
func launch(site Site, bin string, args ...string) (*Daemon, error) {
	d := &Daemon{Site: site, out: &tailBuffer{max: 16 << 10}, done: make(chan struct{}), bin: bin}
	d.cmd = site.NS.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", bin, site.NS.Name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	d.PID = d.cmd.Process.Pid
	return d, nil
}

// StartPepsal runs `pepsal run --iface IF --relay R [extra...]` at site and
// waits until `pepsal status` says it serves. A daemon that exits first is
// reported with the last line it printed, its error message.
func StartPepsal(ctx context.Context, bin string, site Site, relay string, extra []string) (*Daemon, error) {
	args := append([]string{"run", "--iface", site.Iface, "--relay", relay}, extra...)
	d, err := launch(site, bin, args...)
	if err != nil {
		return nil, err
	}
	d.undo = func(ctx context.Context) {
		// The daemon detaches when it stops; this also covers a SIGKILL.
		_ = exec.CommandContext(ctx, "nsenter", "--net="+site.NS.Path(), "--", bin, "detach").Run()
	}
	if err := d.waitReady(ctx, func() bool { return site.NS.Command(bin, "status").Run() == nil },
		func() string {
			return fmt.Sprintf("not serving after %s: %s", startTimeout, lastLine(d.out.String(), nil))
		}); err != nil {
		return nil, err
	}
	if st, err := d.Status(); err == nil && st.Daemon != nil && st.Daemon.PID > 0 {
		d.PID = st.Daemon.PID
	} else {
		d.PID = realPID(d.PID)
	}
	return d, nil
}

// PepsalStatus is the part of `pepsal status --json` the benchmark reads.
type PepsalStatus struct {
	Serving bool `json:"serving"`
	Daemon  *struct {
		PID   int `json:"pid"`
		Stats struct {
			Accepted      uint64 `json:"accepted"`
			Active        int64  `json:"active"`
			Completed     uint64 `json:"completed"`
			Reset         uint64 `json:"reset"`
			BytesToServer uint64 `json:"bytes_to_server"`
			BytesToClient uint64 `json:"bytes_to_client"`
			KernelBytes   uint64 `json:"kernel_bytes"`
		} `json:"stats"`
	} `json:"daemon"`
}

// Status asks the pepsal daemon of the site for its state.
func (d *Daemon) Status() (PepsalStatus, error) {
	var st PepsalStatus
	if d.ref {
		return st, errors.New("the reference PEPsal has no status command")
	}
	out, err := d.Site.NS.Command(d.bin, "status", "--json").Output()
	if len(out) == 0 && err != nil {
		return st, fmt.Errorf("pepsal status --json: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("pepsal status --json: %w", err)
	}
	return st, nil
}

// Stop ends the daemon (SIGTERM, then SIGKILL) and undoes its setup. It is
// safe to call twice.
func (d *Daemon) Stop() {
	if !d.exited() {
		// The whole group: nsenter execs the proxy, but if it ever forked,
		// the proxy would be its child in the same group.
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(stopTimeout):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
	if d.undo != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.undo(ctx)
		cancel()
		d.undo = nil
	}
}

// waitReady polls ready for up to startTimeout. A daemon that exits first is
// reported with the last line it printed; a timeout with late(). Either way
// the daemon is stopped.
func (d *Daemon) waitReady(ctx context.Context, ready func() bool, late func() string) error {
	for deadline := time.Now().Add(startTimeout); !ready(); time.Sleep(100 * time.Millisecond) {
		if d.exited() {
			d.Stop()
			return fmt.Errorf("%s", lastLine(d.out.String(), d.err))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.Stop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errors.New(late())
		}
	}
	return nil
}

// Output is the tail of what the daemon printed.
func (d *Daemon) Output() string { return d.out.String() }

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
		func() string { return fmt.Sprintf("not listening on port %s after %s", refPort, startTimeout) }); err != nil {
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

// StartProxies starts the mode's PEP at every site; on a failure the ones
// already started are stopped. No proxy: nothing to start.
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

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
