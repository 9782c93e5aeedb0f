// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/pepsal/pepsal/loader/procid"
	"golang.org/x/sys/unix"
)

// BPFFS is where bpffs is expected (and mounted if it is not).
const BPFFS = "/sys/fs/bpf"

// Names of the pinned objects inside the pin directory.
const (
	pinSteerLink   = "link_steer_netns"
	pinClassify    = "pepsal_classify"
	pinSteer       = "pepsal_steer"
	pinRelay       = "pepsal_verdict"
	pinConfig      = "pepsal_config"
	pinOwner       = "pepsal_owner"
	tcLinkPrefix   = "link_classify_if"
	pinDirBaseName = "pepsal"
	// tmpPinSuffix and the attaching pid name the directory an attach
	// fills before renaming it into place (bpffs refuses names with dots).
	tmpPinSuffix = "_tmp_"
)

// NetnsID identifies the current network namespace (its inode number), which
// keeps the pins of daemons in different namespaces of one host apart. The
// kernel gives a dead namespace's inode number to the next new one, so the
// pins found under it are checked against the netns cookie (foreignPins).
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
	return PinDirOf(id), nil
}

// PinDirOf is the pin directory of the namespace whose inode number is id.
func PinDirOf(id uint64) string {
	return filepath.Join(BPFFS, pinDirBaseName, fmt.Sprintf("netns-%d", id))
}

// ForeignPinsError says that the pin directory of this namespace holds the
// attachment of a namespace that is gone and had the same inode number.
// Nothing of it works here; attach, run --iface and detach remove it.
type ForeignPinsError struct {
	Dir    string
	Reason string
}

func (e *ForeignPinsError) Error() string { return e.Reason }

// Is makes a dead namespace's pins count as "not attached" here.
func (e *ForeignPinsError) Is(target error) bool { return target == ErrNotAttached }

// foreignPins returns a ForeignPinsError when the pins in dir were made in
// another network namespace, nil when they are this one's or there are none.
func foreignPins(dir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinConfig), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned config: %w", err)
	}
	defer m.Close()
	var c classifyConfig
	if err := m.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	if c.NetnsCookie != 0 {
		if c.NetnsCookie == cookie {
			return nil
		}
		return &ForeignPinsError{Dir: dir, Reason: fmt.Sprintf(
			"%s holds the pins of a dead network namespace (netns cookie %d, this one is %d) that had this one's inode number",
			dir, c.NetnsCookie, cookie)}
	}
	// No cookie recorded (pins of a version that recorded it after pinning):
	// the sk_lookup link still knows its namespace, 0 once that is gone.
	ino, err := NetnsID()
	if err != nil {
		return err
	}
	linkIno, err := steerLinkNetns(dir)
	if err != nil {
		return err
	}
	if linkIno == ino {
		return nil
	}
	return &ForeignPinsError{Dir: dir, Reason: fmt.Sprintf(
		"%s holds the pins of another network namespace: its sk_lookup link is on netns inode %d (0: a dead one)", dir, linkIno)}
}

// steerLinkNetns is the inode of the namespace the pinned sk_lookup link is
// attached to: 0 when that namespace is gone (or the link is missing).
func steerLinkNetns(dir string) (uint64, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinSteerLink), nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open pinned sk_lookup link: %w", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("read sk_lookup link info: %w", err)
	}
	ns := info.NetNs()
	if ns == nil {
		return 0, fmt.Errorf("%s is not a network namespace link", pinSteerLink)
	}
	return uint64(ns.NetnsInode), nil
}

// removeForeignPins removes a dead namespace's attachment. Its tc links,
// rules, routes and sysctls died with it; what outlives it is the sock_ops
// program on the root cgroup (shared by every namespace) and the pins, and
// nothing here may touch this namespace's interfaces or routing.
func removeForeignPins(dir string) error {
	var errs []error
	if l, err := link.LoadPinnedLink(filepath.Join(dir, pinTuneLink), nil); err == nil {
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach the dead namespace's sock_ops program: %w", err))
		}
		l.Close()
	}
	// Dropping the last reference to the other links and programs frees them.
	errs = append(errs, removePinDir(dir))
	return errors.Join(errs...)
}

// owner identifies the `pepsal run --iface` daemon that made (or adopted) an
// attachment and removes it when it stops; zero for `pepsal attach`, whose
// attachment persists. It is the record pinned as pepsal_owner (its layout is
// the map's value); the process behind it is a procid.ID.
type owner struct {
	PID       uint32
	_         uint32
	StartTime uint64 // clock ticks after boot, /proc/PID/stat field 22
}

func newOwnerMap() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: pinOwner, Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1, Key: btfU32, Value: ownerBTF})
	if err != nil {
		return nil, fmt.Errorf("create %s map: %w", pinOwner, err)
	}
	return m, nil
}

// self is this process as an owner.
func self() (owner, error) {
	id, err := procid.Self()
	if err != nil {
		return owner{}, err
	}
	return owner{PID: uint32(id.PID), StartTime: id.Start}, nil
}

// alive says whether the owner daemon still runs.
func (o owner) alive() bool {
	return procid.ID{PID: int(o.PID), Start: o.StartTime}.Alive()
}

// readOwner returns the owner recorded in dir; zero (persistent) when none is
// recorded, as with pins made before ownership was recorded.
func readOwner(dir string) (owner, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinOwner), nil)
	if errors.Is(err, os.ErrNotExist) {
		return owner{}, nil
	}
	if err != nil {
		return owner{}, fmt.Errorf("open pinned %s: %w", pinOwner, err)
	}
	defer m.Close()
	var o owner
	if err := m.Lookup(uint32(0), &o); err != nil {
		return owner{}, fmt.Errorf("read owner: %w", err)
	}
	return o, nil
}

func writeOwner(dir string, o owner) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinOwner), nil)
	if err != nil {
		return fmt.Errorf("open pinned %s: %w", pinOwner, err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), o); err != nil {
		return fmt.Errorf("record owner: %w", err)
	}
	return nil
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

// lock takes the exclusive lock on the pepsal directory in bpffs so that two
// writers (attach, detach, a starting daemon) never interleave.
func lock() (unlock func(), err error) {
	return procid.Lock(filepath.Join(BPFFS, pinDirBaseName))
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
