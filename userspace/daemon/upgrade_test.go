// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The successor in these tests is this test binary again, run with
// PEPSAL_TEST_SUCCESSOR set: see TestMain's hook below.
func init() {
	mode := os.Getenv("PEPSAL_TEST_SUCCESSOR")
	if mode == "" {
		return
	}
	os.Exit(successor(mode))
}

func successor(mode string) int {
	if mode == "fail" {
		return 3 // dies before saying it serves
	}
	if mode == "hang" {
		time.Sleep(time.Minute)
		return 0
	}
	// Before anything here touches them: the handed sockets must still be
	// non-blocking. The mode belongs to the socket, so a parent that
	// switched it (exec.Cmd's ExtraFiles does, through File.Fd) would have
	// its own accept loops block in accept(2) until we switched it back.
	for _, item := range strings.Split(os.Getenv(upgradeEnv), ",") {
		name, fdText, _ := strings.Cut(item, ":")
		fd, _ := strconv.Atoi(fdText)
		if name == "ready" {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || flags&unix.O_NONBLOCK == 0 {
			return 7
		}
	}
	in, err := InheritedFromEnv()
	if err != nil || in == nil || in.ParentPID == 0 {
		return 4
	}
	if err := in.Ready(); err != nil {
		return 5
	}
	// Serve one connection on each inherited socket, saying who we are.
	lns := []net.Listener{in.V4, in.Control}
	if in.Peer != nil {
		lns = append(lns, in.Peer)
	}
	for _, ln := range lns {
		c, err := ln.Accept()
		if err != nil {
			return 6
		}
		io.WriteString(c, "successor\n")
		c.Close()
	}
	return 0
}

func TestHandoffPassesListeningSockets(t *testing.T) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ctlPath := filepath.Join(t.TempDir(), "ctl")
	ctl, err := net.Listen("unix", ctlPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	peer, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	// A connection queued before the handoff is served by the successor:
	// the accept queue belongs to the socket, not to a process.
	queued, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	// So is a terminal's connection to the gateway's listener.
	queuedPeer, err := net.Dial("tcp", peer.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer queuedPeer.Close()

	t.Setenv("PEPSAL_TEST_SUCCESSOR", "serve")
	pid, err := StartSuccessor(os.Args[0], []string{"-test.run=^$"}, Handed{Control: ctl, V4: tcp, Peer: peer}, 20*time.Second)
	if err != nil {
		t.Fatalf("successor: %v", err)
	}
	if pid == 0 || pid == os.Getpid() {
		t.Fatalf("successor pid %d", pid)
	}
	// The old daemon's sockets must stay non-blocking (the mode belongs to
	// the socket, not to a descriptor): else its accept loop blocks in
	// accept(2) and its Close waits for the next connection.
	for what, c := range map[string]syscall.Conn{"tcp": tcp, "control": ctl.(syscall.Conn), "peer": peer} {
		rc, _ := c.SyscallConn()
		rc.Control(func(fd uintptr) {
			flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
			if err != nil || flags&unix.O_NONBLOCK == 0 {
				t.Errorf("%s listener left in blocking mode by the handoff (flags %#x, %v)", what, flags, err)
			}
		})
	}
	tcp.Close() // the old daemon stops accepting; the socket lives on in the successor
	peer.Close()
	for what, c := range map[string]net.Conn{"queued tcp": queued, "control": mustDialUnix(t, ctlPath), "queued peer": queuedPeer} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || strings.TrimSpace(string(got)) != "successor" {
			t.Errorf("%s: got %q, %v; want the successor's answer", what, got, err)
		}
	}
}

func mustDialUnix(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestHandoffFailuresKeepTheOldDaemon(t *testing.T) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ctl, err := net.Listen("unix", filepath.Join(t.TempDir(), "ctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	for mode, want := range map[string]string{"fail": "failed", "hang": "not serving after"} {
		t.Setenv("PEPSAL_TEST_SUCCESSOR", mode)
		_, err := StartSuccessor(os.Args[0], []string{"-test.run=^$"}, Handed{Control: ctl, V4: tcp}, 2*time.Second)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("successor %s: %v, want %q", mode, err, want)
		}
	}
	// The old daemon's sockets still work.
	oldDaemonAnswers(t, tcp, "old daemon after failed upgrades")
}

func TestInheritedFromEnvRejectsGarbage(t *testing.T) {
	for _, spec := range []string{"v4", "v4:x", "v4:1", "ready:999", "v4:998,ready:999"} {
		t.Setenv(upgradeEnv, spec)
		if in, err := InheritedFromEnv(); err == nil {
			t.Errorf("%q accepted: %+v", spec, in)
		}
	}
	t.Setenv(upgradeEnv, "")
	if in, err := InheritedFromEnv(); in != nil || err != nil {
		t.Errorf("no upgrade: %v %v", in, err)
	}
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := Notify("MAINPID=42\nREADY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	sock.SetDeadline(time.Now().Add(5 * time.Second))
	n, err := sock.Read(buf)
	if err != nil || string(buf[:n]) != "MAINPID=42\nREADY=1" {
		t.Errorf("systemd got %q, %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Errorf("without systemd: %v", err)
	}
}

// oldDaemonAnswers checks that the old daemon's listener still accepts and
// serves after what, an upgrade that did not happen.
func oldDaemonAnswers(t *testing.T, tcp *net.TCPListener, what string) {
	t.Helper()
	go func() {
		if c, err := tcp.Accept(); err == nil {
			io.WriteString(c, "old\n")
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(c); string(got) != "old\n" {
		t.Errorf("%s: %q", what, got)
	}
}
