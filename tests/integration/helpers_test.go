// SPDX-License-Identifier: Apache-2.0

// Package integration runs pepsal for real: client, router and server network
// namespaces over veth, real sockets, real BPF. Needs root.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
	"golang.org/x/sys/unix"
)

var pepsalBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests need root (network namespaces, BPF)")
		os.Exit(1)
	}
	os.Exit(harness.RunWithBinary(m, &pepsalBin))
}

// bed is one test topology: client -- router -- server.
type bed struct {
	*testbed.Topology
	t *testing.T
	// suite is how the bed's daemons run (startPepsal).
	suite suite
}

// newBed builds a test bed whose daemons run with settings cfg.
func newBed(t *testing.T, cfg suite) *bed {
	t.Helper()
	return newBedWith(t, cfg, testbed.Options{})
}

// server and client addresses per family.
type family struct {
	name                         string
	client, server, routerServer string
	routerClient                 string
}

var families = []family{
	{"ipv4", testbed.ClientV4, testbed.ServerV4, testbed.RouterServerV4, testbed.RouterClientV4},
	{"ipv6", testbed.ClientV6, testbed.ServerV6, testbed.RouterServerV6, testbed.RouterClientV6},
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }

// result of a pepsal CLI call.
type result struct {
	stdout, stderr string
	code           int
}

// pepsal runs the CLI in the router namespace.
func (b *bed) pepsal(args ...string) result {
	return runCmdIn(b.Router, pepsalBin, args...)
}

func runCmdIn(ns *testbed.NS, name string, args ...string) result {
	cmd := ns.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			code = -1
		}
	}
	return result{out.String(), errb.String(), code}
}

// daemon is a running `pepsal run`.
type daemon = harness.Process

// startPepsal runs `pepsal run` in the router namespace and waits until
// `pepsal status` says it serves. It is stopped (SIGTERM, then SIGKILL) at cleanup.
func (b *bed) startPepsal(args ...string) *daemon {
	b.t.Helper()
	if len(args) == 0 {
		args = []string{"--iface", testbed.RouterClientIf}
	}
	return startPepsalIn(b.t, b.suite, b.Router, args...)
}

// startPepsalIn runs `pepsal run` in ns with settings cfg (relay mode, wrapper
// command).
func startPepsalIn(t *testing.T, cfg suite, ns *testbed.NS, args ...string) *daemon {
	t.Helper()
	args = append([]string{"--log-level", "debug", "--relay", cfg.relay}, args...)
	if cfg.relay == "sockmap" && cfg.offloadAfter != "" {
		args = append([]string{"--offload-after", cfg.offloadAfter}, args...)
	}
	d, err := harness.StartPepsal(t.Context(), ns, pepsalBin, harness.Options{Wrapper: cfg.wrapper}, args...)
	if d != nil {
		t.Cleanup(func() {
			d.Stop(syscall.SIGTERM, 10*time.Second)
			if t.Failed() && err == nil {
				t.Logf("pepsal output (%s):\n%s", ns.Name, d.Output())
			}
		})
	}
	if err != nil {
		out := ""
		if d != nil {
			out = d.Output()
		}
		t.Fatalf("%v:\n%s", err, out)
	}
	checkRelayInUse(t, ns, args)
	return d
}

// checkRelayInUse: a daemon asked for the kernel relay uses it exactly where
// the product's probe says this kernel can (what relayInUse predicts for the
// tests' assertions), and says why not otherwise.
func checkRelayInUse(t *testing.T, ns *testbed.NS, args []string) {
	t.Helper()
	asked := ""
	for i, a := range args[:len(args)-1] {
		if a == "--relay" {
			asked = args[i+1]
		}
	}
	if asked != "sockmap" {
		return
	}
	want := suite{relay: asked}.relayInUse(t)
	info := statusIn(t, ns).Daemon
	switch {
	case info == nil:
		t.Fatalf("no daemon in status after start")
	case info.Relay != want:
		t.Fatalf("daemon relays by %s, the kernel relay probe says %s (off: %v)", info.Relay, want, info.Off)
	case want != asked && len(info.Off) == 0:
		t.Fatalf("daemon relays by %s instead of %s and does not say why", info.Relay, asked)
	}
}

// status is `pepsal status --json` in the router namespace.
func (b *bed) status() status {
	b.t.Helper()
	return statusIn(b.t, b.Router)
}

// status is the decoded `pepsal status --json`; its counter lookup fails
// the test on a name the report does not have.
type status struct {
	report.StatusReport
	t testing.TB
}

// statusIn is `pepsal status --json` in ns.
func statusIn(t testing.TB, ns *testbed.NS) status {
	t.Helper()
	st, _ := statusExit(t, ns)
	return st
}

// statusExit is statusIn with how the command ended: status exits non-zero
// when not serving but still reports; a document that does not decode
// fails the test.
func statusExit(t testing.TB, ns *testbed.NS) (status, result) {
	t.Helper()
	r := runCmdIn(ns, pepsalBin, "status", "--json")
	var st report.StatusReport
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json in %s: %v\n%s%s", ns.Name, err, r.stdout, r.stderr)
	}
	return status{st, t}, r
}

// counter is the classifier counter name; a name the report lacks (renamed,
// misspelled) fails the test instead of reading as zero.
func (s status) counter(name string) uint64 {
	s.t.Helper()
	v, ok := s.Counter(name)
	if !ok {
		names := make([]string, len(s.Counters))
		for i, c := range s.Counters {
			names[i] = c.Name
		}
		s.t.Fatalf("no counter %q in pepsal status (has %v)", name, names)
	}
	return v
}

// daemonStatus is the router's status with its daemon and relay map parts:
// a status without them fails the test.
func (b *bed) daemonStatus() status {
	b.t.Helper()
	s := b.status()
	if s.Daemon == nil || s.Relay == nil {
		b.t.Fatalf("status without a daemon or relay map entries: %+v", s.StatusReport)
	}
	return s
}

// daemonInfo is what the router's daemon says of itself.
func (b *bed) daemonInfo() *report.DaemonInfo {
	b.t.Helper()
	s := b.status()
	if s.Daemon == nil {
		b.t.Fatalf("status without a daemon: %s", s.DaemonNote)
	}
	return s.Daemon
}

// conns is `pepsal conns --json` in the router namespace.
func (b *bed) conns() []report.ConnInfo {
	b.t.Helper()
	return connsIn(b.t, b.Router)
}

func connsIn(t testing.TB, ns *testbed.NS) []report.ConnInfo {
	t.Helper()
	cs, err := harness.Conns(ns, pepsalBin)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// listen opens a TCP listener inside ns.
func listen(t *testing.T, ns *testbed.NS, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// serve listens on addr in ns (closed at cleanup) and runs handle for each
// connection in its own goroutine, closing the connection when handle returns.
func serve(t *testing.T, ns *testbed.NS, addr string, handle func(c *net.TCPConn)) {
	t.Helper()
	ln := listen(t, ns, addr)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// dial connects from inside ns.
func dial(ns *testbed.NS, addr string, timeout time.Duration) (*net.TCPConn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		d.SetMultipathTCP(false)
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func mustDial(t *testing.T, ns *testbed.NS, addr string) *net.TCPConn {
	t.Helper()
	c, err := dial(ns, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// peerServer accepts connections and answers each with the peer address it
// saw, then echoes until EOF. It proves who the server talks to.
func peerServer(t *testing.T, ns *testbed.NS, addr string) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		ip := net.ParseIP(host)
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		fmt.Fprintf(c, "%s\n", ip)
		io.Copy(c, c)
	})
}

// peerSeen connects, reads the peer address the server saw, and checks the
// echo of a few bytes on the same connection.
func peerSeen(t *testing.T, ns *testbed.NS, addr string) string {
	t.Helper()
	c := mustDial(t, ns, addr)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c)
	if err != nil {
		t.Fatalf("read peer line from %s: %v", addr, err)
	}
	msg := []byte("ping through")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %q, %v", got, err)
	}
	return line
}

func readLine(r io.Reader) (string, error) {
	var sb strings.Builder
	b := make([]byte, 1)
	for {
		if _, err := r.Read(b); err != nil {
			return sb.String(), err
		}
		if b[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b[0])
	}
}

// netState is everything pepsal may touch in a namespace and in bpffs, as
// text, to compare before and after.
func netState(t *testing.T, ns *testbed.NS) string {
	t.Helper()
	var parts []string
	for _, args := range [][]string{
		{"ip", "-4", "rule"}, {"ip", "-6", "rule"},
		{"ip", "-4", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"tc", "qdisc", "show"}, {"tc", "filter", "show", "dev", testbed.RouterClientIf, "ingress"},
		{"bpftool", "net", "show"},
	} {
		out, err := ns.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		parts = append(parts, strings.Join(args, " ")+":\n"+scrubVolatile(string(out)))
	}
	for _, key := range []string{"net.ipv4.tcp_early_demux", "net.ipv4.tcp_fastopen"} {
		out, err := ns.Command("sysctl", "-n", key).CombinedOutput()
		if err != nil {
			t.Fatalf("sysctl %s: %v\n%s", key, err, out)
		}
		parts = append(parts, key+" = "+strings.TrimSpace(string(out)))
	}
	parts = append(parts, "pins:\n"+pins(t, ns))
	return strings.Join(parts, "\n")
}

// withoutLines drops the lines of s that end with suffix.
func withoutLines(s, suffix string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasSuffix(l, suffix) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// scrubVolatile drops route cache details that change by themselves.
func scrubVolatile(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "expires") || strings.Contains(l, "fe80::") || strings.Contains(l, "ff00::") || strings.HasPrefix(l, "multicast") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// pins lists the pins of ns's pin directory (and of its temporary twin):
// other namespaces (other test beds, a benchmark) have their own.
func pins(t *testing.T, ns *testbed.NS) string {
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatalf("stat %s: %v", ns.Path(), err)
	}
	matches, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/pepsal/netns-%d*", st.Ino))
	var names []string
	for _, m := range matches {
		_ = filepath.Walk(m, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				names = append(names, p)
			}
			return nil
		})
	}
	sort.Strings(names)
	return strings.Join(names, "\n")
}

// vanish closes c without a segment to its peer, as if its reset had been
// lost on the link: a socket in TCP repair mode closes silently (CRIU's
// way), and its host answers whatever comes next with a reset.
func vanish(t *testing.T, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR, 1) }); err != nil || serr != nil {
		t.Fatalf("TCP_REPAIR: %v", errors.Join(err, serr))
	}
	c.Close()
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
