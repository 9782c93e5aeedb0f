// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// A client of the control socket run as another user is this test binary
// again, with PEPSAL_TEST_ASK_AT set: it sends PEPSAL_TEST_ASK and copies
// the answer's line to its stdout.
func init() {
	if path := os.Getenv("PEPSAL_TEST_ASK_AT"); path != "" {
		os.Exit(askAt(path, os.Getenv("PEPSAL_TEST_ASK")))
	}
}

func askAt(path, request string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, request)
	// One line, as pepsal reads it: a refused client's request was never
	// read, so what follows the line is a reset, not an end of file.
	line, err := bufio.NewReader(c).ReadString('\n')
	os.Stdout.WriteString(line)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

var testInfo = report.DaemonInfo{PID: 4242, Version: "test"}

// serveOn serves s on ln until the test ends.
func serveOn(t *testing.T, ln net.Listener, s *ControlServer) {
	t.Helper()
	if s.Info == nil {
		s.Info = func() report.DaemonInfo { return testInfo }
	}
	if s.Table == nil {
		s.Table = proxy.NewTable()
	}
	s.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() { ln.Close(); <-done })
}

// listenTemp is a control listener on a path of the test's (any user).
func listenTemp(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return ln, path
}

func TestControlGroupAdmits(t *testing.T) {
	ops := ControlGroup{Name: "ops", GID: 4242, Set: true}
	me := uint32(os.Geteuid())
	for _, c := range []struct {
		g    ControlGroup
		p    sockopt.Peer
		want bool
	}{
		{ControlGroup{}, sockopt.Peer{UID: 0, GID: 0}, true},
		{ControlGroup{}, sockopt.Peer{UID: me, GID: 1}, true}, // the daemon's own user
		{ControlGroup{}, sockopt.Peer{UID: 1000, GID: 4242, Groups: []uint32{4242}}, false},
		{ops, sockopt.Peer{UID: 1000, GID: 4242}, true},
		{ops, sockopt.Peer{UID: 1000, GID: 100, Groups: []uint32{27, 4242}}, true},
		{ops, sockopt.Peer{UID: 1000, GID: 100, Groups: []uint32{27}}, false},
	} {
		if me == c.p.UID && c.p.UID != 0 && !c.want {
			continue // running as that user: it is the daemon's own
		}
		if got := c.g.Admits(c.p); got != c.want {
			t.Errorf("%+v admits %+v: %v, want %v", c.g, c.p, got, c.want)
		}
	}
}

// TestControlRefusesOtherUsers: a process of another user is refused with
// one line naming who may ask, unless it is in the control group (as its
// primary group or a supplementary one, as the kernel recorded them).
func TestControlRefusesOtherUsers(t *testing.T) {
	nettest.RequireRoot(t)
	ops := ControlGroup{Name: "ops", GID: 4242, Set: true}
	for _, c := range []struct {
		name  string
		group ControlGroup
		cred  syscall.Credential
		want  string
	}{
		{"root only", ControlGroup{}, syscall.Credential{Uid: nettest.Nobody, Gid: nettest.Nobody},
			`{"error":"permission denied: pepsal's control socket needs root"}`},
		{"not in the group", ops, syscall.Credential{Uid: nettest.Nobody, Gid: nettest.Nobody, Groups: []uint32{100}},
			`{"error":"permission denied: pepsal's control socket needs root or group ops"}`},
		{"primary group", ControlGroup{Name: "nogroup", GID: nettest.Nobody, Set: true},
			syscall.Credential{Uid: nettest.Nobody, Gid: nettest.Nobody}, `{"pid":4242,"version":"test"`},
		{"supplementary group", ops, syscall.Credential{Uid: nettest.Nobody, Gid: nettest.Nobody, Groups: []uint32{100, 4242}},
			`{"pid":4242,"version":"test"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			place := report.Control{Dir: filepath.Join(nettest.SharedDir(t), "pepsal", "netns-1")}
			ln, err := ListenControl(place)
			if err != nil {
				t.Fatal(err)
			}
			serveOn(t, ln, &ControlServer{Group: c.group})
			cmd := nettest.ThisTestAs(t, &c.cred, "PEPSAL_TEST_ASK_AT="+place.Path(), "PEPSAL_TEST_ASK=info")
			out, err := cmd.Output()
			if err != nil || !strings.HasPrefix(string(out), c.want) {
				t.Errorf("uid %d groups %v asked: %v, %q; want %q...", c.cred.Uid, c.cred.Groups, err, out, c.want)
			}
		})
	}
}

// TestControlBoundsTheRequestLine: a client that sends 100 MiB without a
// newline is dropped once it has sent ControlLineMax; the daemon's heap
// does not grow with what it sends.
func TestControlBoundsTheRequestLine(t *testing.T) {
	ln, path := listenTemp(t)
	serveOn(t, ln, &ControlServer{})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var sent int
	var werr error
	for sent < 100<<20 && werr == nil {
		var n int
		n, werr = c.Write(chunk)
		sent += n
	}
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if werr == nil {
		t.Errorf("the daemon read all %d MiB of a request line: the client was not dropped", sent>>20)
	} else if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
		t.Errorf("client's write: %v, want the connection closed (EPIPE or ECONNRESET)", werr)
	}
	if grew > 8<<20 {
		t.Errorf("the heap grew by %d MiB while a client sent %d MiB of one line", grew>>20, sent>>20)
	}
	t.Logf("sent %d KiB before the drop, heap %+d KiB", sent>>10, grew>>10)
}

// TestControlBoundsClients: ControlClients clients that say nothing hold
// every place; the next is told the daemon is busy at once; each silent
// one is dropped at the deadline, after which a client is answered.
func TestControlBoundsClients(t *testing.T) {
	ln, path := listenTemp(t)
	const deadline = time.Second
	serveOn(t, ln, &ControlServer{Deadline: deadline})
	silent := make([]net.Conn, ControlClients)
	for i := range silent {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent[i] = c
	}
	busy := ask(t, path, "info")
	if want := fmt.Sprintf(`{"error":"busy: %d clients are being answered, try again"}`, ControlClients); busy != want {
		t.Errorf("client %d: %q, want %q", ControlClients+1, busy, want)
	}
	start := time.Now()
	for i, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(5 * deadline))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("silent client %d: read %d, %v; want EOF (dropped)", i, n, err)
		}
	}
	if waited := time.Since(start); waited > 3*deadline {
		t.Errorf("silent clients dropped after %s, deadline %s", waited, deadline)
	}
	if got := ask(t, path, "info"); !strings.HasPrefix(got, `{"pid":4242`) {
		t.Errorf("after the silent clients: %q", got)
	}
}

// ask sends request to the control socket at path and returns the answer.
func ask(t *testing.T, path, request string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, request)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v (%q)", request, err, line)
	}
	return strings.TrimSpace(line)
}

// TestListenControl: the socket is made in directories of root's, mode
// 0755, the socket 0666; a second daemon is refused while the first
// serves; closing leaves the name (an upgrade's successor serves on it),
// and a socket whose daemon is gone is replaced.
func TestListenControl(t *testing.T) {
	nettest.RequireRoot(t)
	place := report.Control{Dir: filepath.Join(nettest.SharedDir(t), "pepsal", "netns-1")}
	ln, err := ListenControl(place)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]fs.FileMode{filepath.Dir(place.Dir): fs.ModeDir | 0o755, place.Dir: fs.ModeDir | 0o755, place.Path(): fs.ModeSocket | 0o666} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %v", path, fi.Mode(), err, want)
		}
	}
	go func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			c.Close()
		}
	}()
	if _, err := ListenControl(place); err == nil || !strings.Contains(err.Error(), "another pepsal daemon is serving") {
		t.Errorf("a second daemon: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(place.Path()); err != nil {
		t.Errorf("closing removed the socket an upgrade hands over: %v", err)
	}
	again, err := ListenControl(place)
	if err != nil {
		t.Fatalf("a socket whose daemon is gone: %v", err)
	}
	again.Close()
	removeControl(place)
	if _, err := os.Stat(place.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removeControl left %s: %v", place.Dir, err)
	}
}

// TestListenControlSweepsDeadSockets: the sockets of other namespaces
// whose daemons are gone are removed with their directories; a live one
// stays.
func TestListenControlSweepsDeadSockets(t *testing.T) {
	nettest.RequireRoot(t)
	root := filepath.Join(nettest.SharedDir(t), "pepsal")
	live, dead := report.Control{Dir: filepath.Join(root, "netns-2")}, report.Control{Dir: filepath.Join(root, "netns-3")}
	liveLn, err := ListenControl(live)
	if err != nil {
		t.Fatal(err)
	}
	defer liveLn.Close()
	deadLn, err := ListenControl(dead)
	if err != nil {
		t.Fatal(err)
	}
	deadLn.Close() // as a killed daemon leaves it
	ln, err := ListenControl(report.Control{Dir: filepath.Join(root, "netns-1")})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := os.Stat(dead.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a dead daemon's %s is still there: %v", dead.Dir, err)
	}
	if _, err := os.Stat(live.Path()); err != nil {
		t.Errorf("a live daemon's socket was swept: %v", err)
	}
}

// TestListenControlRefusesASquattedPlace: where a user other than root
// could have put the socket, the daemon does not serve, and says why.
func TestListenControlRefusesASquattedPlace(t *testing.T) {
	nettest.RequireRoot(t)
	for _, c := range []struct {
		name   string
		tamper func(root string) error
		want   string
	}{
		{"owned by another user", func(root string) error { return os.Chown(root, nettest.Nobody, nettest.Nobody) }, "belongs to uid 65534, not root"},
		{"writable by all", func(root string) error { return os.Chmod(root, 0o777) }, "is writable by users other than root"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(nettest.SharedDir(t), "pepsal")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := c.tamper(root); err != nil {
				t.Fatal(err)
			}
			ln, err := ListenControl(report.Control{Dir: filepath.Join(root, "netns-1")})
			if err == nil {
				ln.Close()
				t.Fatal("served in a place another user could have made")
			}
			var np *report.NotPepsalError
			if !errors.As(err, &np) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v; want a NotPepsalError saying %q", err, c.want)
			}
		})
	}
}
