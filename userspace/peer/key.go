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
var ErrNoKey = errors.New("a pre-shared key file is required for warm paths (make one: (umask 077; head -c 32 /dev/urandom > FILE))")

// KeyError is a pre-shared key file that cannot serve: Error reads "peer key"
// then Detail (": open ...: no such file", " /etc/k is not a regular file"),
// so that a caller can put its own name for the key in front of Detail.
type KeyError struct {
	Detail string
	Err    error // the cause, if any
}

func (e *KeyError) Error() string { return "peer key" + e.Detail }
func (e *KeyError) Unwrap() error { return e.Err }

// maxKeyFile bounds what a key file may hold: a key is a few dozen bytes,
// a key ring a line of about a hundred per terminal.
const maxKeyFile = 1 << 20

// readKeyFile reads a --peer-key file: a regular file owned by root or
// the daemon's user that nobody else can read or write (a key others can
// read is no secret, and a terminal holding it may make the gateway dial
// anywhere). The path's last component must not be a symbolic link:
// whoever can change the link would pick the key. It returns the file's
// stamp too, which tells a later version of it (watchKeys).
func readKeyFile(path string) ([]byte, fileStamp, error) {
	if path == "" {
		return nil, fileStamp{}, ErrNoKey
	}
	f, st, err := openKey(path)
	if err != nil {
		return nil, fileStamp{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	switch {
	case err != nil:
		return nil, fileStamp{}, keyErr(err, " %s: %v", path, err)
	case len(data) > maxKeyFile:
		return nil, fileStamp{}, keyErr(nil, " %s is larger than %d bytes: not a key file", path, maxKeyFile)
	}
	return data, stampOf(st), nil
}

func keyErr(err error, format string, args ...any) error {
	return &KeyError{Detail: fmt.Sprintf(format, args...), Err: err}
}

// openKey opens the key file and checks what it opened (fstat: no name
// can be swapped between the check and the read). A FIFO, a device or a
// socket is refused before it is opened, and the open itself neither waits
// for a FIFO's writer (O_NONBLOCK) nor follows a symbolic link (O_NOFOLLOW).
func openKey(path string) (*os.File, *unix.Stat_t, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink == 0 && !st.Mode().IsRegular() {
		return nil, nil, keyErr(nil, " %s is not a regular file", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, nil, keyErr(err, " %s is a symbolic link: give the key file itself", path)
	}
	if err != nil {
		err = &fs.PathError{Op: "open", Path: path, Err: err}
		return nil, nil, keyErr(err, ": %v", err)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, nil, keyErr(err, " %s: fstat: %v", path, err)
	}
	if err := checkKeyStat(path, &st); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, &st, nil
}

// fileStamp tells one version of a key file from another: a file replaced
// (rename) has another inode, one edited in place another size or times.
type fileStamp struct {
	dev, ino, size uint64
	mtime, ctime   unix.Timespec
}

func stampOf(st *unix.Stat_t) fileStamp {
	return fileStamp{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim, ctime: st.Ctim}
}

// statKey is the stamp of the key file now, without opening it.
func statKey(path string) (fileStamp, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileStamp{}, err
	}
	return stampOf(&st), nil
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
