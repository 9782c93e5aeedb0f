// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ifreqData is struct ifreq with the ifr_data member of the union.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd, data uint32
}

// disableOffloads turns off segmentation, aggregation and checksum offloads
// with the legacy SIOCETHTOOL commands, so the interface neither builds
// super-frames on receive nor expects them on transmit. It must run inside
// the interface's namespace. Features a driver cannot change are skipped:
// the bridge copes with offloaded frames anyway (see segment.go).
func disableOffloads(ifname string) error {
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q too long", ifname)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	var errs []error
	// TSO before tx checksum: the kernel refuses TSO without checksumming
	// but not the other way round, so this order never fails on dependencies.
	for _, c := range []struct {
		name string
		cmd  uint32
	}{
		{"tso", unix.ETHTOOL_STSO},
		{"gso", unix.ETHTOOL_SGSO},
		{"gro", unix.ETHTOOL_SGRO},
		{"tx-checksum", unix.ETHTOOL_STXCSUM},
		{"rx-checksum", unix.ETHTOOL_SRXCSUM},
	} {
		ev := &ethtoolValue{cmd: c.cmd}
		ifr := &ifreqData{data: unsafe.Pointer(ev)}
		copy(ifr.name[:], ifname)
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
		runtime.KeepAlive(ev)
		runtime.KeepAlive(ifr)
		switch {
		case e == 0, e == unix.EOPNOTSUPP:
		case e == unix.ENODEV:
			return fmt.Errorf("ethtool %s: %w", ifname, e)
		default:
			errs = append(errs, fmt.Errorf("ethtool %s %s off: %w", ifname, c.name, e))
		}
	}
	return errors.Join(errs...)
}
