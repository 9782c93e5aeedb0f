// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
)

// binaryIn puts a program file (a copy of this test binary) in a new
// directory of mode dirMode, with mode fileMode.
func binaryIn(t *testing.T, dirMode, fileMode os.FileMode) (dir, bin string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "bin")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "pepsal")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	// Past the umask, the directory last.
	if err := os.Chmod(bin, fileMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// TestTrustedBinary: an upgrade starts only a regular file that root or
// the daemon's user owns, in directories up to / that only they can
// change (a sticky directory, like /tmp, protects the entries it does not
// own), with no symbolic link on the way.
func TestTrustedBinary(t *testing.T) {
	for _, c := range []struct {
		name              string
		dirMode, fileMode os.FileMode
		want              string // "": trusted
	}{
		{"755 in 755", 0o755, 0o755, ""},
		{"700 in 700", 0o700, 0o700, ""},
		{"in a sticky world-writable directory", 0o777 | os.ModeSticky, 0o755, ""},
		{"in a group-writable directory", 0o775, 0o755, "writable by group or others"},
		{"in a world-writable directory", 0o757, 0o755, "writable by group or others"},
		{"group-writable", 0o755, 0o775, "writable by group or others"},
		{"world-writable", 0o755, 0o757, "writable by group or others"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, bin := binaryIn(t, c.dirMode, c.fileMode)
			expectTrusted(t, bin, c.want)
		})
	}
	t.Run("a symbolic link", func(t *testing.T) {
		dir, bin := binaryIn(t, 0o755, 0o755)
		link := filepath.Join(dir, "link")
		if err := os.Symlink(bin, link); err != nil {
			t.Fatal(err)
		}
		expectTrusted(t, link, "is a symbolic link")
	})
	t.Run("through a linked directory", func(t *testing.T) {
		dir, _ := binaryIn(t, 0o755, 0o755)
		link := filepath.Join(filepath.Dir(dir), "linked")
		if err := os.Symlink(dir, link); err != nil {
			t.Fatal(err)
		}
		expectTrusted(t, filepath.Join(link, "pepsal"), "is a symbolic link")
	})
	t.Run("a directory", func(t *testing.T) {
		dir, _ := binaryIn(t, 0o755, 0o755)
		expectTrusted(t, dir, "not a regular file")
	})
	t.Run("missing", func(t *testing.T) {
		dir, _ := binaryIn(t, 0o755, 0o755)
		expectTrusted(t, filepath.Join(dir, "gone"), "no such file")
	})
}

// TestTrustedBinaryOwners: a binary, or a directory on its path, owned by
// another user is refused: that user could replace it.
func TestTrustedBinaryOwners(t *testing.T) {
	nettest.RequireRoot(t)
	dir, bin := binaryIn(t, 0o755, 0o755)
	if err := os.Chown(bin, nettest.Nobody, nettest.Nobody); err != nil {
		t.Fatal(err)
	}
	expectTrusted(t, bin, "owned by uid 65534")
	dir, bin = binaryIn(t, 0o755, 0o755)
	if err := os.Chown(dir, nettest.Nobody, nettest.Nobody); err != nil {
		t.Fatal(err)
	}
	expectTrusted(t, bin, "owned by uid 65534")
}

func expectTrusted(t *testing.T, bin, want string) {
	t.Helper()
	err := trustedBinary(bin)
	switch {
	case want == "" && err != nil:
		t.Errorf("%s refused: %v", bin, err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("%s: %v, want refused with %q", bin, err, want)
	}
}

// TestUpgradeRefusesAnUntrustedBinary: SIGHUP's successor is not started
// from a binary in a group-writable directory; the old daemon serves on.
func TestUpgradeRefusesAnUntrustedBinary(t *testing.T) {
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
	_, bin := binaryIn(t, 0o775, 0o755)
	t.Setenv("PEPSAL_TEST_SUCCESSOR", "serve")
	pid, err := StartSuccessor(bin, []string{"-test.run=^$"}, Handed{Control: ctl, V4: tcp}, 5*time.Second)
	if pid != 0 {
		syscall.Kill(pid, syscall.SIGKILL) // started all the same: do not leave it behind
	}
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("successor from a group-writable directory: pid %d, %v; want refused", pid, err)
	}
	oldDaemonAnswers(t, tcp, "old daemon after a refused upgrade")
}
