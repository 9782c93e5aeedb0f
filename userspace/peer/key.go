// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNoKey: warm paths need a pre-shared key file.
var ErrNoKey = errors.New("a pre-shared key file is required for warm paths (make one: head -c 32 /dev/urandom > FILE; chmod 600 FILE)")

// KeyError is a pre-shared key file that cannot serve: Error reads "peer key"
// then Detail (": open ...: no such file", " /etc/k is not a regular file"),
// so that a caller can put its own name for the key in front of Detail.
type KeyError struct {
	Detail string
	Err    error // the cause, if any
}

func (e *KeyError) Error() string { return "peer key" + e.Detail }
func (e *KeyError) Unwrap() error { return e.Err }

// maxKeyFile bounds what LoadKey reads: a key file is a few dozen bytes.
const maxKeyFile = 4095

// LoadKey reads the pre-shared key of the warm paths: at least 32 bytes,
// in a regular file owned by root or the daemon's user that nobody else
// can read or write (a key others can read is no secret, and a terminal
// holding it may make the gateway dial anywhere). The path's last
// component must not be a symbolic link: whoever can change the link
// would pick the key.
func LoadKey(path string) ([]byte, error) {
	if path == "" {
		return nil, ErrNoKey
	}
	f, err := openKey(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	key, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	switch {
	case err != nil:
		return nil, keyErr(err, " %s: %v", path, err)
	case len(key) > maxKeyFile:
		return nil, keyErr(nil, " %s is larger than %d bytes: not a key file", path, maxKeyFile)
	case len(key) < minKeyLen:
		return nil, keyErr(nil, " %s holds %d bytes, want at least %d random bytes (head -c 32 /dev/urandom > %s)", path, len(key), minKeyLen, path)
	}
	return key, nil
}

func keyErr(err error, format string, args ...any) error {
	return &KeyError{Detail: fmt.Sprintf(format, args...), Err: err}
}

// openKey opens the key file and checks what it opened (fstat: no name
// can be swapped between the check and the read). A FIFO, a device or a
// socket is refused before it is opened, and the open itself neither waits
// for a FIFO's writer (O_NONBLOCK) nor follows a symbolic link (O_NOFOLLOW).
func openKey(path string) (*os.File, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink == 0 && !st.Mode().IsRegular() {
		return nil, keyErr(nil, " %s is not a regular file", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, keyErr(err, " %s is a symbolic link: give the key file itself", path)
	}
	if err != nil {
		err = &fs.PathError{Op: "open", Path: path, Err: err}
		return nil, keyErr(err, ": %v", err)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, keyErr(err, " %s: fstat: %v", path, err)
	}
	if err := checkKeyStat(path, &st); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkKeyStat refuses a key file that is not a regular file, belongs to
// another user than root or this process's, or that group or others may
// read or write.
func checkKeyStat(path string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return keyErr(nil, " %s is not a regular file", path)
	}
	if euid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != euid {
		return keyErr(nil, " %s is owned by uid %d, not root or this daemon's uid %d: chown root %s", path, st.Uid, euid, path)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		return keyErr(nil, " %s is readable or writable by group or others (mode %#o): chmod 600 %s", path, perm, path)
	}
	return nil
}
