// SPDX-License-Identifier: Apache-2.0

package nettest

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Nobody is the user a test runs a process as when it must not be root.
const Nobody = 65534

// RequireRoot skips the test unless it runs as root: making files of
// another user's and running a process as one need it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a process as another user")
	}
}

// SharedDir is a new directory of root's, mode 0755 (the other users may
// look in, not write), removed when the test ends. t.TempDir's are 0700.
func SharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pepsal-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ThisTestAs is this test binary again, run with cred (uid, gid and
// supplementary groups) and env added: the package's init reads env and
// plays the other user's part. The binary is copied where that user may
// run it (go test builds in a directory of root's alone).
func ThisTestAs(t testing.TB, cred *syscall.Credential, env ...string) *exec.Cmd {
	t.Helper()
	RequireRoot(t)
	self, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	bin := filepath.Join(SharedDir(t), "test")
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, self); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return cmd
}
