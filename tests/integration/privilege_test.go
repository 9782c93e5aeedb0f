// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// TestPinsArePrivate: the pinned maps and programs are the daemon's
// steering state (a write to the config or diverted maps would steer other
// users' connections); bpffs checks file permissions before the BPF
// capability, so every directory and object of the attachment must be
// root's alone, and a user who is not root cannot even list them.
func TestPinsArePrivate(t *testing.T) {
	b := newBed(t, defaultSuite())
	b.startPepsal()
	var dir string
	if err := b.Router.Do(func() (err error) { dir, err = loader.PinDir(); return err }); err != nil {
		t.Fatal(err)
	}
	seen := 0
	check := func(path string, info fs.FileInfo) {
		seen++
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok || st.Uid != 0 {
			t.Errorf("%s is not root's: %+v", path, info.Sys())
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s is %v: group or others may use it", path, info.Mode())
		}
	}
	// The directories above the attachment's, up to bpffs's own.
	for p := filepath.Dir(dir); p != loader.BPFFS && p != "/"; p = filepath.Dir(p) {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		check(p, info)
	}
	err := filepath.Walk(dir, func(path string, info fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		check(path, info)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 10 {
		t.Fatalf("only %d entries under %s: not the attachment's pins", seen, dir)
	}
	for _, p := range []string{dir, filepath.Join(dir, "pepsal_config")} {
		if r := asNobody(b.Router, "ls", "-l", p); r.code == 0 {
			t.Errorf("uid %s listed %s:\n%s", nobody, p, r.stdout)
		}
	}
}
