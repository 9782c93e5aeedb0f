// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/loader/procid"
	"github.com/pepsal/pepsal/userspace/report"
)

// ListenControl opens the control socket at place (report.ThisNamespace),
// making its directories (mode 0755, root's) when missing. It fails when a
// daemon already serves there, and when a user other than root could have
// put something there (report.Control.CheckDirs). A socket left by a killed
// daemon is replaced. The socket is mode 0666: who may ask is the daemon's
// check of the peer's credentials (ControlServer), one place with one
// refusal line. Closing the listener leaves the socket's name, which an
// upgrade hands over with it; removeControl removes it.
func ListenControl(place report.Control) (net.Listener, error) {
	root := filepath.Dir(place.Dir)
	if err := makeDir(root); err != nil {
		return nil, err
	}
	// One daemon at a time between the check and the bind: two starting
	// together must not both find a stale socket and remove each other's.
	unlock, err := procid.Lock(root)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer unlock()
	if err := makeDir(place.Dir); err != nil {
		return nil, err
	}
	if err := place.CheckDirs(); err != nil {
		return nil, fmt.Errorf("control socket: %w; remove it and start again", err)
	}
	if err := clearStale(place.Path()); err != nil {
		return nil, err
	}
	sweepControls(root, place.Dir)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: place.Path(), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", place.Path(), err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(place.Path(), 0o666); err != nil {
		ln.Close()
		os.Remove(place.Path())
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// makeDir makes dir, mode 0755 whatever the umask, when it is missing; one
// that exists is left as it is, for CheckDirs to judge.
func makeDir(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	return nil
}

// clearStale removes what is at path unless a daemon listens there: a
// socket whose daemon was killed refuses connections.
func clearStale(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another pepsal daemon is serving in this network namespace (control socket %s)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove the stale control socket: %w", err)
	}
	return nil
}

// sweepControls removes the other namespaces' control sockets that no
// daemon serves any more (killed, or their namespace gone), with their
// directories: /run outlives them. Called under the lock, so no daemon is
// between its check and its bind.
func sweepControls(root, keep string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "netns-*"))
	for _, dir := range dirs {
		if dir == keep {
			continue
		}
		if clearStale(filepath.Join(dir, report.ControlSocketName)) == nil {
			os.Remove(dir) // only if empty: what else is there is not ours
		}
	}
}

// removeControl removes the control socket and its directory, at the end
// of the daemon that serves on it (not of one that handed it over).
func removeControl(place report.Control) {
	os.Remove(place.Path())
	os.Remove(place.Dir)
}

// isControlAt says whether ln is the control socket at place: a daemon
// older than this one served on an abstract name, and its successor must
// open the socket where this version's clients look for it.
func isControlAt(ln net.Listener, place report.Control) bool {
	return ln.Addr().String() == place.Path()
}
