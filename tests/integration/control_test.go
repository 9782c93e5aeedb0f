// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// nobody is the user the tests ask the daemon as when they must not be root.
const nobody = "65534"

// binaryForAll is a copy of pepsal that any user may run (the build
// directory is root's alone).
func binaryForAll(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pepsal-any-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "pepsal")
	copyFile(t, pepsalBin, bin)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// asNobody runs name args... in ns as uid and gid 65534, no other group.
func asNobody(ns *testbed.NS, name string, args ...string) result {
	return runCmdIn(ns, "nsenter", append([]string{"--net=" + ns.Path(), "-S", nobody, "-G", nobody, "--", name}, args...)...)
}

// controlPlace is where the daemon of ns serves its control socket.
func controlPlace(t *testing.T, ns *testbed.NS) report.Control {
	t.Helper()
	var c report.Control
	if err := ns.Do(func() (err error) { c, err = report.ThisNamespace(); return err }); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestControlRefusesOtherUsers: a user who is neither root nor in the
// --control-group is refused `pepsal conns` in one line, exit 1; a member
// of the group is answered; the daemon removes its socket when it stops.
func TestControlRefusesOtherUsers(t *testing.T) {
	b := newBed(t, defaultSuite())
	bin := binaryForAll(t)
	d := b.startPepsal()
	r := asNobody(b.Router, bin, "conns")
	oneLineError(t, r, "permission denied: pepsal's control socket needs root")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("conns as uid %s: exit %d, stdout %q", nobody, r.code, r.stdout)
	}
	if r := b.pepsal("conns"); r.code != 0 {
		t.Errorf("conns as root: exit %d, stderr %q", r.code, r.stderr)
	}
	if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	place := controlPlace(t, b.Router)
	if _, err := os.Stat(place.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the stopped daemon left %s: %v", place.Dir, err)
	}

	b.startPepsal("--iface", testbed.RouterClientIf, "--control-group", nobody)
	if r := asNobody(b.Router, bin, "conns"); r.code != 0 || r.stderr != "" {
		t.Errorf("conns as a member of --control-group: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestControlSquatterIsNotBelieved: a user who is not root takes what it
// can of the control socket's names before the daemon starts (the abstract
// name of the versions before, the path of this one): the daemon serves
// all the same and `pepsal status` names it, not the squatter.
func TestControlSquatterIsNotBelieved(t *testing.T) {
	b := newBed(t, defaultSuite())
	answer := `echo '{"pid":1,"version":"impostor"}'`
	ctx, cancel := context.WithCancel(context.Background())
	squatter := exec.CommandContext(ctx, "nsenter", "--net="+b.Router.Path(), "-S", nobody, "-G", nobody, "--",
		"socat", "ABSTRACT-LISTEN:pepsal-control,fork", "SYSTEM:"+answer)
	if err := squatter.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); squatter.Wait() })
	waitFor(t, 5*time.Second, "the squatter listening", func() bool {
		out, _ := b.Router.Command("ss", "-xlH").Output()
		return strings.Contains(string(out), "@pepsal-control")
	})
	place := controlPlace(t, b.Router)
	r := asNobody(b.Router, "timeout", "2", "sh", "-c", "mkdir -p "+place.Dir+" && socat UNIX-LISTEN:"+place.Path()+",fork SYSTEM:\""+answer+"\"")
	if r.code == 0 || r.code == 124 {
		t.Errorf("uid %s took %s: exit %d, stderr %q", nobody, place.Path(), r.code, r.stderr)
	}

	b.startPepsal()
	var s report.StatusReport
	r = b.pepsal("status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || r.code != 0 || s.Daemon == nil ||
		s.Daemon.Version == "impostor" || s.Daemon.PID == 1 {
		t.Errorf("status: exit %d, %v, daemon %+v; want the daemon's own word:\n%s%s", r.code, err, s.Daemon, r.stdout, r.stderr)
	}
}
