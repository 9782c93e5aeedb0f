package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// BPFFS is where bpffs is expected (and mounted if it is not).
const BPFFS = "/sys/fs/bpf"

// Names of the pinned objects inside the pin directory.
const (
	pinSteerLink   = "link_steer_netns"
	pinClassify    = "pepsal_classify"
	pinSteer       = "pepsal_steer"
	pinRelay       = "pepsal_relay_verdict"
	tcLinkPrefix   = "link_classify_if"
	pinDirBaseName = "pepsal"
)

// NetnsID identifies the current network namespace (its inode number), which
// keeps the pins of daemons in different namespaces of one host apart.
func NetnsID() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("identify network namespace: %w", err)
	}
	return st.Ino, nil
}

// PinDir is the pin directory for the current network namespace.
func PinDir() (string, error) {
	id, err := NetnsID()
	if err != nil {
		return "", err
	}
	return filepath.Join(BPFFS, pinDirBaseName, fmt.Sprintf("netns-%d", id)), nil
}

// ensureBPFFS mounts bpffs on /sys/fs/bpf when nothing is mounted there.
func ensureBPFFS() error {
	var fs unix.Statfs_t
	if err := unix.Statfs(BPFFS, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", BPFFS, err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", BPFFS, err)
	}
	return nil
}

// lock takes an exclusive flock on the pepsal directory in bpffs so that two
// writers (attach, detach, a starting daemon) never interleave.
func lock() (unlock func(), err error) {
	base := filepath.Join(BPFFS, pinDirBaseName)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", base, err)
	}
	fd, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", base, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", base, err)
	}
	return func() { unix.Close(fd) }, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// removePinDir removes the (now empty of live objects) pin directory and the
// pepsal base directory when no other namespace uses it.
func removePinDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	_ = os.Remove(filepath.Dir(dir)) // fails while other namespaces have pins
	return nil
}
