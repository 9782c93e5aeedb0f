// SPDX-License-Identifier: Apache-2.0

package report_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/report"
	"golang.org/x/sys/unix"
)

// An impostor run as another user is this test binary again, with
// PEPSAL_TEST_IMPOSTOR set: it listens on descriptor 3 (a socket root
// bound where pepsal's should be), says so on stdout, and answers one
// client as if it were the daemon.
func init() {
	if os.Getenv("PEPSAL_TEST_IMPOSTOR") != "" {
		os.Exit(impostor())
	}
}

func impostor() int {
	if err := unix.Listen(3, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("listening")
	fd, _, err := unix.Accept(3)
	if err != nil {
		return 3
	}
	c := os.NewFile(uintptr(fd), "client")
	defer c.Close()
	bufio.NewReader(c).ReadString('\n')
	fmt.Fprintln(c, `{"pid":1,"version":"impostor"}`)
	return 0
}

// servedPlace is a control socket's place made as the daemon makes it,
// with a server that answers one request the daemon's way.
func servedPlace(t *testing.T) report.Control {
	t.Helper()
	c := report.Control{Dir: filepath.Join(nettest.SharedDir(t), "pepsal", "netns-1")}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", c.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for conn, err := ln.Accept(); err == nil; conn, err = ln.Accept() {
			bufio.NewReader(conn).ReadString('\n')
			fmt.Fprintln(conn, `{"pid":4242,"version":"pepsal"}`)
			conn.Close()
		}
	}()
	return c
}

// TestQueryTrustsOnlyRootsPlace: Query believes a socket only where root
// alone could have put it; elsewhere it says so and believes nothing.
func TestQueryTrustsOnlyRootsPlace(t *testing.T) {
	nettest.RequireRoot(t)
	for _, c := range []struct {
		name   string
		tamper func(c report.Control) error
		want   string // "" : the daemon's answer
	}{
		{"root's", func(report.Control) error { return nil }, ""},
		{"directory of another user", func(c report.Control) error { return os.Chown(c.Dir, nettest.Nobody, nettest.Nobody) }, "belongs to uid 65534, not root"},
		{"directory writable by all", func(c report.Control) error { return os.Chmod(c.Dir, 0o777) }, "is writable by users other than root"},
		{"parent writable by all", func(c report.Control) error { return os.Chmod(filepath.Dir(c.Dir), 0o777) }, "is writable by users other than root"},
		{"sticky parent", func(c report.Control) error { return os.Chmod(filepath.Dir(c.Dir), 0o777|os.ModeSticky) }, ""},
		{"socket of another user", func(c report.Control) error { return os.Chown(c.Path(), nettest.Nobody, nettest.Nobody) }, "the socket belongs to uid 65534, not root"},
	} {
		t.Run(c.name, func(t *testing.T) {
			place := servedPlace(t)
			if err := c.tamper(place); err != nil {
				t.Fatal(err)
			}
			var info report.DaemonInfo
			err := place.Query("info", &info)
			var np *report.NotPepsalError
			switch {
			case c.want == "" && (err != nil || info.PID != 4242):
				t.Errorf("%v, %+v; want the daemon's answer", err, info)
			case c.want != "" && (!errors.As(err, &np) || !strings.Contains(err.Error(), c.want) || info.PID != 0):
				t.Errorf("%v, %+v; want a NotPepsalError saying %q, and nothing believed", err, info, c.want)
			}
		})
	}
	var info report.DaemonInfo
	missing := report.Control{Dir: filepath.Join(nettest.SharedDir(t), "pepsal", "netns-1")}
	if err := missing.Query("info", &info); !errors.Is(err, report.ErrNoDaemon) {
		t.Errorf("no socket: %v, want ErrNoDaemon", err)
	}
}

// TestQueryRefusesAServerNotRoot: a socket in root's place whose listener
// runs as another user (root bound it, the other user listens) is not
// pepsal's daemon.
func TestQueryRefusesAServerNotRoot(t *testing.T) {
	nettest.RequireRoot(t)
	place := report.Control{Dir: filepath.Join(nettest.SharedDir(t), "pepsal", "netns-1")}
	if err := os.MkdirAll(place.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fd), "bound")
	defer sock.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: place.Path()}); err != nil {
		t.Fatal(err)
	}
	cmd := nettest.ThisTestAs(t, &syscall.Credential{Uid: nettest.Nobody, Gid: nettest.Nobody}, "PEPSAL_TEST_IMPOSTOR=1")
	cmd.ExtraFiles = []*os.File{sock}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "listening\n" {
		t.Fatalf("impostor: %q, %v", line, err)
	}
	var info report.DaemonInfo
	err = place.Query("info", &info)
	var np *report.NotPepsalError
	if !errors.As(err, &np) || !strings.Contains(err.Error(), "runs as uid 65534, not root") || info.Version == "impostor" {
		t.Errorf("%v, %+v; want a NotPepsalError for a server of uid 65534, and nothing believed", err, info)
	}
}
