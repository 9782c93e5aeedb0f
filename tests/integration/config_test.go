// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestConfigReload: `pepsal run --config FILE` takes its settings from the
// file; a reload (SIGHUP) applies the edited file without dropping a live
// connection; a file that no longer parses, or one that changes what a
// reload cannot (the listeners' port), is refused in one line and the
// running daemon keeps serving.
func TestConfigReload(t *testing.T) {
	b := newBed(t, defaultSuite())
	port80, port81 := hostPort(testbed.ServerV4, 8080), hostPort(testbed.ServerV4, 8081)
	peerServer(t, b.Server, port80)
	peerServer(t, b.Server, port81)
	conf := filepath.Join(t.TempDir(), "pepsal.toml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(conf+".new", []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(conf+".new", conf); err != nil {
			t.Fatal(err)
		}
	}
	base := "iface = [\"" + testbed.RouterClientIf + "\"]\nlog-level = \"debug\"\n"
	write(base + "ports = \"8080\"\n")
	old, _, logPath, _ := startUpgradableLog(t, b.Router, nil, "--config", conf)
	live, split := admitted(t, b, port80)
	if !split {
		t.Fatal("port 8080, in the file's ports, was not split")
	}
	if _, split := admitted(t, b, port81); split {
		t.Fatal("port 8081, not in the file's ports, was split")
	}

	write(base + "ports = \"8080,8081\"\n")
	if err := old.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	pid := waitSuccessor(t, b.Router, old.Process.Pid)
	if _, split := admitted(t, b, port81); !split {
		t.Error("port 8081 not split after the reload added it")
	}
	echo(t, live, "the connection split before the reload")

	refused := func(text, want string) {
		t.Helper()
		write(text)
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the reload refused", func() bool {
			out, _ := os.ReadFile(logPath)
			return strings.Contains(string(out), want) && strings.Contains(string(out), "upgrade failed: still serving")
		})
		if now, _ := b.daemonIdentity(); now != pid {
			t.Fatalf("status names pid %d, want %d still serving", now, pid)
		}
		if _, split := admitted(t, b, port81); !split {
			t.Error("port 8081 not split after a refused reload")
		}
		echo(t, live, "the live connection after a refused reload")
		os.Truncate(logPath, 0)
	}
	refused(base+"ports = \"8080,8081\"\nbogus = 1\n", `unknown key "bogus"`)
	refused(base+"ports = \"8080,8081\"\nlisten-port = 5001\n", "--listen-port cannot change at a reload (5000, now 5001)")
}

// echo checks that c, a connection to peerServer, still carries bytes.
func echo(t *testing.T, c *net.TCPConn, what string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("again\n")); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	if got, err := readLine(c); err != nil || got != "again" {
		t.Fatalf("%s: echo %q, %v", what, got, err)
	}
}
