// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/daemon"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// result is what a command run in-process left: its exit code and output.
type result struct {
	code           int
	stdout, stderr string
}

// pepsal runs a command line in-process, as main does, with e's seams.
func pepsal(t *testing.T, e *env, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e.args, e.stdout, e.stderr = args, &stdout, &stderr
	code := execute(t.Context(), e)
	return result{code, stdout.String(), stderr.String()}
}

// untouchable is an env whose every way to the host fails the test: a
// command run in it must stop at its own checks.
func untouchable(t *testing.T) *env {
	stop := errors.New("the test stops here")
	return &env{
		privileged: func() error {
			t.Error("privileges checked: the host was about to be touched")
			return stop
		},
		query: func(string, any) error {
			t.Error("the daemon was asked")
			return stop
		},
		openAttachment: func() (*loader.Attachment, error) {
			t.Error("the attachment was opened")
			return nil, stop
		},
	}
}

// oneLine checks that r failed at run time (exit 1) with one line
// "pepsal: ..." holding want, and printed nothing else.
func oneLine(t *testing.T, r result, want string) {
	t.Helper()
	oneLineExit(t, r, 1, want)
}

// usageLine is oneLine for a command line that is wrong: exit 2.
func usageLine(t *testing.T, r result, want string) {
	t.Helper()
	oneLineExit(t, r, 2, want)
}

func oneLineExit(t *testing.T, r result, code int, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if r.code != code || len(lines) != 1 || !strings.HasPrefix(lines[0], "pepsal: ") || !strings.Contains(lines[0], want) || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q: want exit %d and one line with %q", r.code, r.stdout, r.stderr, code, want)
	}
}

// TestBadFlagsStopBeforeTheHost: a bad flag of run or attach is one line
// naming it, and the command stops before it checks its privileges, the
// gate to everything that touches the host.
func TestBadFlagsStopBeforeTheHost(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--iface", "eth0", "--relay", "magic"}, `--relay must be splice or sockmap, not "magic"`},
		{[]string{"run", "--relay-budget", "1KiB"}, `bad --relay-budget "1KiB"`},
		{[]string{"run", "--offload-after", "lots"}, `bad --offload-after "lots"`},
		{[]string{"run", "--relay-budget", "17179869185GiB"}, "--relay-budget 17179869185GiB: too large"},
		{[]string{"run", "--offload-after", "2048GiB"}, "--offload-after 2048GiB: too large"},
		{[]string{"run", "--client-sndbuf", "17179869185GiB"}, `bad --client-sndbuf "17179869185GiB": want a size up to 1GiB`},
		{[]string{"run", "--iface", "eth0", "--ports", "0"}, `bad --ports "0"`},
		{[]string{"run", "--iface", "eth0", "--ports", "90-80"}, "range 90-80 is reversed"},
		{[]string{"run", "--exclude", "10.0.0.0/33"}, `bad --exclude "10.0.0.0/33"`},
		{[]string{"run", "--deny", "10.0.0.0/33"}, "--deny 10.0.0.0/33: not a CIDR prefix or address"},
		{[]string{"run", "--deny", "fd00::/8", "--deny", "intranet"}, "--deny intranet: not a CIDR prefix or address"},
		{[]string{"run", "--iface", "lo"}, "--iface lo: loopback carries no forwarded traffic"},
		{[]string{"run", "--fwmark", "0"}, "--fwmark must not be 0"},
		{[]string{"run", "--connect-timeout", "-1s"}, "--connect-timeout must be positive"},
		{[]string{"run", "--upgrade-drain", "0s"}, "--upgrade-drain must be positive"},
		{[]string{"run", "--listen-port", "70000"}, "--listen-port 70000 is not a port (1-65535)"},
		{[]string{"run", "--metrics-addr", "127.0.0.1"}, `bad --metrics-addr "127.0.0.1"`},
		{[]string{"run", "--max-conns", "0"}, `bad --max-conns "0"`},
		{[]string{"run", "--max-conns-per-client", "-3"}, `bad --max-conns-per-client "-3"`},
		{[]string{"run", "--max-conns-per-client", "many"}, `bad --max-conns-per-client "many"`},
		{[]string{"run", "--role", "gateway", "--fastopen-from", "10.0.0.0/33"}, "--fastopen-from 10.0.0.0/33: not a CIDR prefix or address"},
		{[]string{"run", "--role", "gateway", "--fastopen-from", "terminals"}, "--fastopen-from terminals: not a CIDR prefix or address"},
		{[]string{"run", "--role", "terminal", "--fastopen-from", "10.0.0.0/8"}, "--fastopen-from needs listeners that take data in SYNs: --role gateway or --fastopen"},
		{[]string{"run", "--fastopen-from", "10.0.0.0/8"}, "--fastopen-from needs listeners that take data in SYNs"},
		{[]string{"run", "--role", "gateway", "--fastopen=false", "--fastopen-from", "10.0.0.0/8"}, "--fastopen-from needs listeners that take data in SYNs"},
		{[]string{"run", "--log-level", "loud"}, `bad --log-level "loud"`},
		{[]string{"run", "--log-format", "xml"}, `bad --log-format "xml": want text or json`},
		{[]string{"run", "--control-group", "no-such-group-here"}, `bad --control-group "no-such-group-here"`},
		{[]string{"run", "--role", "satellite"}, `--role must be auto, gateway, terminal or none, not "satellite"`},
		{[]string{"run", "--client-mss", "5"}, "--client-mss 5 is out of range (88-65495)"},
		{[]string{"run", "--rto-max", "500ms"}, "bad --rto-max: 500ms: want auto, 0 (off) or a duration from 1s to 120s"},
		{[]string{"run", "--rto-max", "5m"}, "bad --rto-max: 5m0s: want auto, 0 (off) or a duration from 1s to 120s"},
		{[]string{"run", "--rto-max", "soon"}, `bad --rto-max: "soon": want auto, 0 (off)`},
		{[]string{"run", "--rto-max", "-2s"}, "bad --rto-max: -2s: want auto"},
		{[]string{"run", "--role", "none", "--rto-max", "3s"}, "--rto-max bounds the long leg: it needs --role gateway, terminal or auto"},
		{[]string{"run", "--peer-pool", "5"}, "--peer-pool needs --peer (terminal) or --peer-listen (gateway)"},
		{[]string{"run", "--peer", "192.0.2.1"}, `bad --peer "192.0.2.1"`},
		{[]string{"run", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"run", "--iface-wait"}, "--iface-wait needs --iface"},
		{[]string{"run", "--iface-wait=maybe", "--iface", "eth0"}, `invalid argument "maybe" for "--iface-wait"`},
		{[]string{"attach", "--iface", "eth0", "--iface-wait"}, "unknown flag: --iface-wait"},
		{[]string{"run", "extra"}, `unknown command "extra"`},
		{[]string{"attach"}, "attach needs at least one --iface"},
		{[]string{"attach", "--iface", "eth0", "--max-conns=-5"}, `bad --max-conns "-5"`},
		{[]string{"attach", "--iface", "eth0", "--tc-mode", "xdp"}, `--tc-mode must be auto, tcx or clsact, not "xdp"`},
		{[]string{"attach", "--iface", "eth0", "--route-table", "254"}, "--route-table 254 is reserved or out of range"},
		{[]string{"run", "--forward-filter", "output"}, `--forward-filter must be check, mirrored or ignore, not "output"`},
		{[]string{"run", "--forward-filter="}, `--forward-filter must be check, mirrored or ignore, not ""`},
		{[]string{"attach", "--iface", "eth0", "--forward-filter", "IGNORE"}, `--forward-filter must be check, mirrored or ignore, not "IGNORE"`},
		{[]string{"attach", "--iface", "eth0", "--server-mark", "7"}, "unknown flag: --server-mark"},
		{[]string{"run", "--server-mark", "7"}, "--server-mark needs --forward-filter=mirrored"},
		{[]string{"run", "--forward-filter=ignore", "--server-mark", "7"}, "--server-mark needs --forward-filter=mirrored"},
		{[]string{"run", "--forward-filter=mirrored", "--server-mark", "0x5e9a1"}, "--server-mark 0x5e9a1 is --fwmark's"},
		{[]string{"run", "--forward-filter=mirrored", "--fwmark", "7", "--server-mark", "7"}, "--server-mark 0x7 is --fwmark's"},
		{[]string{"run", "--forward-filter=mirrored", "--server-mark", "-1"}, `invalid argument "-1" for "--server-mark"`},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			usageLine(t, pepsal(t, untouchable(t), c.args...), c.want)
		})
	}
}

// TestPeerKeyFileErrors: a bad key ring, or a terminal given a ring of
// more than its own key, stops run in one line that names --peer-key, the
// file and the line at fault, before anything touches the host.
func TestPeerKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	key := strings.Repeat("k", 32)
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dup := write("dup", "site-a "+key+"\nsite-a "+key+"\n")
	short := write("short", "# ring\nsite-a short\n")
	badClients := write("clients", "site-a "+key+" clients=10.0.0.0/33\n")
	two := write("two", "site-a "+key+"\nsite-b "+key+"\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer-listen", ":7700", "--peer-key", dup}, "--peer-key " + dup + ": line 2: id site-a is on line 1 already"},
		{[]string{"--peer-listen", ":7700", "--peer-key", short}, "--peer-key " + short + ": line 2: the key of site-a is 5 bytes, want at least 32"},
		{[]string{"--peer-listen", ":7700", "--peer-key", badClients}, `line 1: site-a: bad clients= prefix "10.0.0.0/33"`},
		{[]string{"--peer", "192.0.2.1:7700", "--peer-key", two}, "--peer-key " + two + " holds 2 keys: a terminal's key file holds its own, one `ID KEY` line"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			usageLine(t, pepsal(t, untouchable(t), append([]string{"run"}, c.args...)...), c.want)
		})
	}
}

// TestLimitErrorsNameTheFlag: the admission policy's shortfalls, said with
// --max-conns in the words the CLI always used (the integration tests and
// operators' scripts match them).
func TestLimitErrorsNameTheFlag(t *testing.T) {
	b := proxy.FDBudget{Limit: 1000, Open: 10, Listeners: 2, Backlog: 512}
	_, fdErr := proxy.FitFDs(5000, b, 0, loader.MaxMapConns)
	queued := b.Capacity(0)
	need := b.Need(5000)
	pipes := int(need) - 2*(5000+queued) - 10 - 64 // 64: the reserve
	for _, c := range []struct {
		err  error
		want string
	}{
		{limitErr(fdErr), fmt.Sprintf("--max-conns 5000 needs %d file descriptors (2 per connection and per queued accept, %d for splice pipes, 74 open or reserved) but RLIMIT_NOFILE is 1000: lower --max-conns to 0 or raise the limit (systemd LimitNOFILE=)", need, pipes)},
		{limitErr(&proxy.MapsShortError{Asked: 5000, Capacity: 4026, Queued: 1026}), "--max-conns 5000: the existing attachment's maps hold 4026 connections (including 1026 in accept queues): `pepsal detach` and attach again with --max-conns, or lower it"},
		{limitErr(&proxy.MapsShortError{Capacity: 1026, Queued: 1026}), "the existing attachment's maps hold 1026 connections, no more than the accept queues (1026): `pepsal detach` and attach again"},
		{limitErr(errors.New("other")), "other"},
	} {
		if c.err == nil || c.err.Error() != c.want {
			t.Errorf("error %q,\nwant %q", c.err, c.want)
		}
	}
	if got := limitFrom(proxy.Limit{From: proxy.FromAsked}) + ", " + limitFrom(proxy.Limit{From: proxy.FromMemory}); got != "--max-conns, memory" {
		t.Errorf("limit from %q", got)
	}
}

// serveControl serves a daemon's control socket, as the daemon serves it,
// on a path of the test's; the env's query asks it there. peer, when not
// nil, stands for the kernel's word on who connected.
func serveControl(t *testing.T, e *env, info report.DaemonInfo, table *proxy.Table, peer func(net.Conn) (sockopt.Peer, error)) {
	addr := filepath.Join(t.TempDir(), "control")
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &daemon.ControlServer{Info: func() report.DaemonInfo { return info }, Table: table, Peer: peer,
		Group: daemon.ControlGroup{Name: "pepsal-ops", GID: 4242, Set: true}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go s.Serve(ln)
	// report.Query's exchange, at addr (Query itself trusts only root's
	// directories and a daemon running as root).
	e.query = func(request string, out any) error {
		c, err := net.Dial("unix", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		return report.Exchange(c, request, out)
	}
}

// testDaemon is what the served daemon says of itself.
var testDaemon = report.DaemonInfo{
	PID: 4242, Relay: "sockmap", Listeners: []string{"127.0.0.1:5000", "[::1]:5000"}, UptimeSeconds: 90.5,
	Version: "v1.2.3", Role: "gateway", Presets: []string{"client leg: bbr, initcwnd 1000", "server leg: Linux defaults", "fast open: accepted"},
	Deny:          []string{"192.0.2.0/24", "2001:db8::/32"},
	Off:           []report.Off{{Feature: "tcx", Why: "Linux 6.1", Instead: "the classifier is attached as a clsact filter"}},
	ForwardFilter: &report.ForwardFilter{Mode: "mirrored", Found: "inet filter forward: policy drop, 3 rules", ServerMark: 0x5e9a2},
	Stats: report.Stats{Active: 2, Accepted: 13, Completed: 7, Reset: 1, Fallback: 3, BytesToServer: 1000, BytesToClient: 3000,
		KernelBytes: 2000, MaxConns: 100, LowWater: 90, FDLimit: 1024, MaxConnsPerClient: 25, LowWaterPerClient: 23, ClientsAtLimit: 1, ClientLimitTrips: 4,
		DestDenied: 3, DestDeniedByReason: map[string]uint64{"own_address": 2, "link_local": 1, "deny_prefix": 0}},
	Listen: report.ListenStats{Backlog: 128, CookiesSent: 40, CookiesRecv: 9, CookiesFailed: 1, Overflows: 2, Drops: 3},
}

// TestStatusOfADaemon: `pepsal status` prints what the daemon's control
// socket answers, and exits 3 while nothing is attached.
func TestStatusOfADaemon(t *testing.T) {
	e := untouchable(t)
	e.openAttachment = func() (*loader.Attachment, error) { return nil, loader.ErrNotAttached }
	serveControl(t, e, testDaemon, proxy.NewTable(), nil)
	r := pepsal(t, e, "status")
	want := []string{
		"attached:  no (nothing in this network namespace)",
		"daemon:    pid 4242, sockmap relay, up 1m30s, listening on [127.0.0.1:5000 [::1]:5000]",
		"version:   v1.2.3",
		"role:      gateway",
		"preset:    client leg: bbr, initcwnd 1000",
		"preset:    server leg: Linux defaults",
		"preset:    fast open: accepted",
		"deny:      192.0.2.0/24, 2001:db8::/32",
		"off:       tcx off: Linux 6.1; the classifier is attached as a clsact filter",
		"forward:   --forward-filter=mirrored, server legs marked 0x5e9a2; forwarded traffic filtered at start by: inet filter forward: policy drop, 3 rules",
		"conns:     2 active, 13 accepted, 7 completed, 1 reset, 0 upstream failed, 0 refused (loop), 3 refused (destination), 3 relayed in userspace instead of the kernel",
		"refused:   destinations pepsal does not connect to: 2 own_address, 1 link_local",
		"limit:     100 connections (split again below 90), fd limit 1024: splitting new connections; full 0 times, 0 resource shortages",
		"listen:    backlog 128; in this namespace: 40 SYN cookies sent, 9 received, 1 failed; 2 listen overflows, 3 listen drops",
		"per client: 25 connections (split again below 23): 1 client(s) at it now, their new connections forwarded unsplit; reached 4 times",
		"bytes:     1000 to servers, 3000 to clients (closed connections), 50% moved by the kernel",
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 3 || r.stderr != "" || len(lines) != len(want)+1 || !strings.HasPrefix(lines[len(want)], "runtime:   ") {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", r.code, r.stderr, r.stdout)
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d: %q, want %q", i+1, lines[i], w)
		}
	}

	r = pepsal(t, e, "status", "--json")
	var rep report.StatusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 3 || rep.Daemon == nil || rep.Daemon.PID != 4242 || rep.Attached ||
		rep.Daemon.Listen != testDaemon.Listen ||
		rep.Daemon.Stats.ClientsAtLimit != 1 || !strings.Contains(r.stdout, `"max_conns_per_client": 25`) {
		t.Errorf("status --json: exit %d, %v:\n%s", r.code, err, r.stdout)
	}
}

// TestStatusWithoutADaemon: no daemon and another namespace's pins: status
// says both, then the incoherence in one line, exit 3.
func TestStatusWithoutADaemon(t *testing.T) {
	e := untouchable(t)
	e.query = func(string, any) error { return errors.New("no pepsal daemon in this network namespace") }
	e.openAttachment = func() (*loader.Attachment, error) {
		return nil, &loader.ForeignPinsError{Dir: "/sys/fs/bpf/pepsal/netns-1", Reason: "pins of another namespace"}
	}
	r := pepsal(t, e, "status")
	want := "attached:  no (nothing in this network namespace)\n" +
		"problem:   pins of another namespace; `pepsal detach`, `pepsal attach` or `pepsal run --iface` removes them\n" +
		"daemon:    not running in this network namespace\n"
	if r.code != 3 || r.stdout != want || r.stderr != "pepsal: attachment not coherent: pins of another namespace; `pepsal detach`, `pepsal attach` or `pepsal run --iface` removes them\n" {
		t.Errorf("exit %d, stdout:\n%s\nstderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestStatusNeedsRoot: a user whom bpffs refuses the pins is told that
// status needs root, in one line, not which syscall failed.
func TestStatusNeedsRoot(t *testing.T) {
	e := untouchable(t)
	e.query = func(string, any) error { return errors.New("permission denied: pepsal's control socket needs root") }
	e.openAttachment = func() (*loader.Attachment, error) {
		return nil, fmt.Errorf("open pinned config: %w", fs.ErrPermission)
	}
	r := pepsal(t, e, "status")
	if r.code != 1 || r.stdout != "" || r.stderr != "pepsal: pepsal status needs root: the BPF pins are root's alone (open pinned config: permission denied)\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestConnsOfADaemon: `pepsal conns` lists what the daemon's table holds.
func TestConnsOfADaemon(t *testing.T) {
	e := untouchable(t)
	table := proxy.NewTable()
	table.Add(netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("192.0.2.1:80"), conn.Splice)
	serveControl(t, e, testDaemon, table, nil)
	r := pepsal(t, e, "conns")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || r.stderr != "" || len(lines) != 2 || !strings.HasPrefix(lines[0], "ID ") ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "1 10.0.0.1:40000 192.0.2.1:80 splice") {
		t.Errorf("exit %d, stderr %q, stdout:\n%s", r.code, r.stderr, r.stdout)
	}
}

// TestConnsRefusedToOtherUsers: a user neither root nor in the control
// group gets one line saying who may ask, exit 1, and no connection.
func TestConnsRefusedToOtherUsers(t *testing.T) {
	e := untouchable(t)
	table := proxy.NewTable()
	table.Add(netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("192.0.2.1:80"), conn.Splice)
	serveControl(t, e, testDaemon, table, func(net.Conn) (sockopt.Peer, error) {
		return sockopt.Peer{PID: 99, UID: 12345, GID: 12345, Groups: []uint32{12345}}, nil
	})
	oneLine(t, pepsal(t, e, "conns"), "permission denied: pepsal's control socket needs root or group pepsal-ops")
	// The group's members may.
	serveControl(t, e, testDaemon, table, func(net.Conn) (sockopt.Peer, error) {
		return sockopt.Peer{PID: 99, UID: 12345, GID: 12345, Groups: []uint32{12345, 4242}}, nil
	})
	if r := pepsal(t, e, "conns"); r.code != 0 || !strings.Contains(r.stdout, "10.0.0.1:40000") {
		t.Errorf("a member of the group: exit %d, stderr %q, stdout:\n%s", r.code, r.stderr, r.stdout)
	}
}

// TestStatusSaysAnImpostor: a control socket that is not pepsal's is said
// as such, never as "not running" nor believed; status exits 3.
func TestStatusSaysAnImpostor(t *testing.T) {
	e := untouchable(t)
	e.openAttachment = func() (*loader.Attachment, error) { return nil, loader.ErrNotAttached }
	e.query = func(string, any) error {
		return &report.NotPepsalError{Path: "/run/pepsal/netns-1/control.sock", Why: "/run/pepsal belongs to uid 65534, not root"}
	}
	r := pepsal(t, e, "status")
	want := "daemon:    not reached: not talking to pepsal: /run/pepsal/netns-1/control.sock is not the daemon's control socket (/run/pepsal belongs to uid 65534, not root)\n"
	if r.code != 3 || !strings.Contains(r.stdout, want) {
		t.Errorf("exit %d, stdout:\n%s\nwant the line %q", r.code, r.stdout, want)
	}
}

// TestHelpAndVersionOnStdout: help and the version go to the command's
// stdout, nothing to its stderr.
func TestHelpAndVersionOnStdout(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"version"}, "pepsal " + version + "\n"},
		{[]string{"--version"}, "pepsal " + version + "\n"},
		{[]string{"--help"}, "Usage:\n  pepsal [command]"},
		{[]string{"help", "status"}, "Usage:\n  pepsal status [flags]"},
		{[]string{"run", "--help"}, "--relay string"},
		{[]string{"attach", "-h"}, "--max-conns string"},
	} {
		r := pepsal(t, untouchable(t), c.args...)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, c.want) {
			t.Errorf("%v: exit %d, stderr %q, stdout:\n%s\nwant %q in it", c.args, r.code, r.stderr, r.stdout, c.want)
		}
	}
}

// TestUsageExitCodes: a wrong command line exits 2 (an unknown command or
// flag, arguments a command does not take, a flag's value refused),
// failures at run time 1, status's "not serving" 3.
func TestUsageExitCodes(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"}, {"run", "--bogus"}, {"status", "extra"}, {"conns", "--json=maybe"},
		{"explain", "10.0.0.1"}, {"explain", "nowhere", "192.0.2.1:80"}, {"run", "--max-conns", "0"},
	} {
		if r := pepsal(t, untouchable(t), args...); r.code != 2 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and one line", args, r.code, r.stdout, r.stderr)
		}
	}
	e := untouchable(t)
	e.query = func(string, any) error { return errors.New("no pepsal daemon in this network namespace") }
	if r := pepsal(t, e, "conns"); r.code != 1 {
		t.Errorf("conns without a daemon: exit %d, want 1", r.code)
	}
}
