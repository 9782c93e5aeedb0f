// SPDX-License-Identifier: Apache-2.0

package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/loader"
	"golang.org/x/sys/unix"
)

// ControlRoot holds the daemons' control sockets, one directory per network
// namespace, keyed by the namespace's inode like the pins (netns-<inode>):
// /run is shared by every namespace of the host, so the key keeps `pepsal
// status` to the daemon of its own. Only root may create anything there, so
// no other user can take a daemon's name before it (an abstract socket
// name, which any process can bind first, could be).
const ControlRoot = "/run/pepsal"

// ControlSocketName is the socket's name in its directory.
const ControlSocketName = "control.sock"

// ErrNoDaemon: nothing answers at the control socket of this namespace.
var ErrNoDaemon = errors.New("no pepsal daemon in this network namespace")

// Control is where one namespace's daemon serves its control socket: a
// directory of root's, writable by root alone, holding the socket.
type Control struct {
	Dir string
}

// ControlOf is the control socket's place for the namespace of inode netns.
func ControlOf(netns uint64) Control {
	return Control{Dir: filepath.Join(ControlRoot, fmt.Sprintf("netns-%d", netns))}
}

// ThisNamespace is the control socket's place for this network namespace.
func ThisNamespace() (Control, error) {
	id, err := loader.NetnsID()
	if err != nil {
		return Control{}, err
	}
	return ControlOf(id), nil
}

// Path is the socket's path.
func (c Control) Path() string { return filepath.Join(c.Dir, ControlSocketName) }

// NotPepsalError says that what serves at the control socket's path cannot
// be pepsal's daemon: a user other than root could have put it there, or it
// runs as another user. Nothing it says is believed.
type NotPepsalError struct {
	Path string
	Why  string
}

func (e *NotPepsalError) Error() string {
	return fmt.Sprintf("not talking to pepsal: %s is not the daemon's control socket (%s)", e.Path, e.Why)
}

// CheckDirs fails with a NotPepsalError unless root alone could have made
// the control socket's directory and what is in it: the directory and every
// one above it belong to root and no other user may write to them (a sticky
// directory above it, like /tmp, lets others create but not rename or
// remove root's entries, so it passes).
func (c Control) CheckDirs() error {
	dir, err := filepath.EvalSymlinks(c.Dir)
	if err != nil {
		return err // missing: nothing there, for the caller to say
	}
	own := true
	for {
		if why := unsafeDir(dir, own); why != "" {
			return &NotPepsalError{Path: c.Path(), Why: why}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir, own = parent, false
	}
}

// unsafeDir says why a user other than root could change what dir holds,
// "" when none could; own is the socket's own directory, where a sticky
// bit does not do.
func unsafeDir(dir string, own bool) string {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err.Error()
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return dir + " is not a directory"
	}
	if st.Uid != 0 {
		return fmt.Sprintf("%s belongs to uid %d, not root", dir, st.Uid)
	}
	sticky := fi.Mode()&fs.ModeSticky != 0 && !own
	if fi.Mode().Perm()&0o022 != 0 && !sticky {
		return fmt.Sprintf("%s is writable by users other than root (mode %s)", dir, fi.Mode().Perm())
	}
	return ""
}

// checkSocket fails with a NotPepsalError unless the path is a socket of
// root's.
func (c Control) checkSocket() error {
	fi, err := os.Lstat(c.Path())
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok || fi.Mode().Type() != fs.ModeSocket:
		return &NotPepsalError{Path: c.Path(), Why: "not a socket"}
	case st.Uid != 0:
		return &NotPepsalError{Path: c.Path(), Why: fmt.Sprintf("the socket belongs to uid %d, not root", st.Uid)}
	}
	return nil
}

// Query asks the daemon of this namespace; out receives the decoded JSON.
func Query(request string, out any) error {
	c, err := ThisNamespace()
	if err != nil {
		return err
	}
	return c.Query(request, out)
}

// Query asks the daemon at c, once it is sure that it is pepsal's: the
// place is root's alone (CheckDirs, the socket's owner) and the process
// that listens runs as root (SO_PEERCRED).
func (c Control) Query(request string, out any) error {
	if err := c.CheckDirs(); err != nil {
		return noDaemon(err)
	}
	if err := c.checkSocket(); err != nil {
		return noDaemon(err)
	}
	conn, err := net.DialTimeout("unix", c.Path(), 2*time.Second)
	if err != nil {
		return noDaemon(err)
	}
	defer conn.Close()
	cred, err := serverCred(conn)
	if err != nil {
		return err
	}
	if cred.Uid != 0 {
		return &NotPepsalError{Path: c.Path(), Why: fmt.Sprintf("its server, pid %d, runs as uid %d, not root", cred.Pid, cred.Uid)}
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	return Exchange(conn, request, out)
}

// noDaemon says a missing or refusing socket as ErrNoDaemon; a
// NotPepsalError stays what it is.
func noDaemon(err error) error {
	var np *NotPepsalError
	if errors.As(err, &np) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNoDaemon, err)
}

// serverCred is who listens at the other end of conn.
func serverCred(conn net.Conn) (*unix.Ucred, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("control socket: not a unix socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("control socket: SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// ControlError is the daemon's answer when it does not answer a request:
// the caller may not ask (permission denied), it is busy, or the request
// is unknown. One line of JSON, like every answer.
type ControlError struct {
	Error string `json:"error"`
}

// Exchange is one request on a connected control socket: the request line
// out, one JSON answer back into out, or the daemon's ControlError as an
// error (answerError).
//
// A daemon that refuses the caller answers before it reads the request and
// closes: the request's write may fail then, and the answer is read all
// the same.
func Exchange(conn net.Conn, request string, out any) error {
	_, werr := fmt.Fprintln(conn, request)
	var raw json.RawMessage
	if err := json.NewDecoder(conn).Decode(&raw); err != nil {
		if werr != nil {
			return fmt.Errorf("send request: %w", werr)
		}
		return fmt.Errorf("read daemon answer: %w", err)
	}
	if err := answerError(raw); err != nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode daemon answer: %w", err)
	}
	return nil
}

// answerError is the error an answer carries: any object with a non-null
// "error" member (the name matched as encoding/json matches it, whatever
// its case) is one, its text if a string. An "error" of another type, or
// given twice, is still an error: it once decoded as an empty report,
// json.Unmarshal having failed on the *string it was read into.
func answerError(raw json.RawMessage) error {
	if !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		return nil
	}
	var refused struct {
		Error json.RawMessage `json:"error"` // any JSON value: no type error possible
	}
	if json.Unmarshal(raw, &refused) != nil || len(refused.Error) == 0 || string(refused.Error) == "null" {
		return nil
	}
	var text string
	if json.Unmarshal(refused.Error, &text) != nil {
		text = "the daemon answered an error: " + string(refused.Error)
	}
	return errors.New(text)
}
