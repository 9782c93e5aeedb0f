// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeKey writes a 32-byte key file of mode perm (past the umask) in dir.
func writeKey(t *testing.T, dir, name string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 32), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// refusedKey checks that LoadKey refuses path in one line holding want.
func refusedKey(t *testing.T, path, want string) {
	t.Helper()
	k, err := LoadKey(path)
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: %d bytes, %v; want one line with %q", path, len(k), err, want)
	}
}

// TestLoadPeerKeyFIFO: a named pipe is refused at once; opening it to read
// would wait for a writer, and the daemon's start with it.
func TestLoadPeerKeyFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "key")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := LoadKey(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("FIFO: %v, want not a regular file", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("LoadKey still waits on a FIFO after 5s")
		// Release it: a writer that opens and closes is an empty key.
		if fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			unix.Close(fd)
		}
		<-done
	}
}

// TestLoadPeerKeySymlink: a key path whose last component is a symbolic
// link is refused, not followed: whoever can change the link picks the key.
func TestLoadPeerKeySymlink(t *testing.T) {
	dir := t.TempDir()
	good := writeKey(t, dir, "good", 0o600)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	refusedKey(t, link, "is a symbolic link")
}

// TestLoadPeerKeyOwner: a key owned by another user than root or the
// daemon's is refused, whatever its mode: that user holds the secret.
func TestLoadPeerKeyOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	k := writeKey(t, t.TempDir(), "key", 0o600)
	if _, err := LoadKey(k); err != nil {
		t.Fatalf("root's key: %v", err)
	}
	if err := os.Chown(k, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	refusedKey(t, k, "owned by uid 65534")
}

// TestLoadPeerKeyModes: only the owner may read or write the key.
func TestLoadPeerKeyModes(t *testing.T) {
	dir := t.TempDir()
	for _, perm := range []os.FileMode{0o400, 0o600} {
		if _, err := LoadKey(writeKey(t, dir, perm.String(), perm)); err != nil {
			t.Errorf("mode %#o: %v", perm, err)
		}
	}
	for _, perm := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o660} {
		refusedKey(t, writeKey(t, dir, perm.String(), perm), "readable or writable by group or others")
	}
}
