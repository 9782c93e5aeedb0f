// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// trustedBinary checks that nobody but root or this daemon's user can
// change the program an upgrade would start from path, which runs with the
// daemon's privileges: path is a regular file they own that group and
// others cannot write, in directories up to / that they own and that
// group and others cannot write, unless the directory is sticky (like
// /tmp: then only an entry's owner, trusted here, may rename or remove
// it). No component may be a symbolic link: whoever owns the link's
// directory could point it elsewhere. The daemon's path comes from
// /proc/self/exe, already resolved.
func trustedBinary(path string) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	euid := uint32(os.Geteuid())
	st, err := trustedEntry(path, euid)
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %#o)", path, st.Mode&0o7777)
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		st, err := trustedEntry(dir, euid)
		if err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s is not a directory", dir)
		}
		if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
			return fmt.Errorf("directory %s is writable by group or others (mode %#o)", dir, st.Mode&0o7777)
		}
		if dir == "/" {
			return nil
		}
	}
}

// trustedEntry is the lstat of name, refused when name is a symbolic link
// or owned by another user than root or euid.
func trustedEntry(name string, euid uint32) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(name, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil, fmt.Errorf("%s is a symbolic link", name)
	}
	if st.Uid != 0 && st.Uid != euid {
		return nil, fmt.Errorf("%s is owned by uid %d, not root or this daemon's uid %d", name, st.Uid, euid)
	}
	return &st, nil
}
