// SPDX-License-Identifier: Apache-2.0

package forwardfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The legacy x_tables interface (linux/netfilter_ipv4/ip_tables.h,
// netfilter_ipv6/ip6_tables.h): iptables-legacy reads a table with two
// getsockopts. Any IP socket takes them (the kernel checks CAP_NET_ADMIN,
// not CAP_NET_RAW), as long as the table exists in the namespace: asking
// for one that does not would instantiate it, so callers look at
// /proc/net/ip*_tables_names first. The offsets are those of 64-bit
// kernels (the counters in an entry are 8-byte aligned).
const (
	xtSoGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	xtSoGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
	xtNameLen      = 32 // XT_TABLE_MAXNAMELEN
	xtHooks        = 5  // NF_INET_NUMHOOKS
	// xt_get_entries: the name and size, then entries 8-byte aligned.
	xtEntriesHeader = 40
	// An entry's target_offset and next_offset (u16 each) follow its
	// ipt_ip / ip6t_ip6 and nfcache.
	ipv4OffsetsAt = 88
	ipv6OffsetsAt = 140
	// A standard target's verdict follows the 32-byte xt_entry_target.
	verdictAt = 32
	// A policy's verdict is -NF_DROP-1 or -NF_ACCEPT-1.
	verdictDrop = -0 - 1 // NF_DROP is 0
)

// xtInfo is struct ipt_getinfo / ip6t_getinfo.
type xtInfo struct {
	Name       [xtNameLen]byte
	ValidHooks uint32
	HookEntry  [xtHooks]uint32
	Underflow  [xtHooks]uint32
	NumEntries uint32
	Size       uint32
}

// legacyForward reads the FORWARD chain of the legacy filter table of an
// address family (unix.AF_INET or AF_INET6): its policy and rule count.
func legacyForward(family int) (Chain, error) {
	level, offsetsAt, fam := unix.SOL_IP, ipv4OffsetsAt, "ip"
	if family == unix.AF_INET6 {
		level, offsetsAt, fam = unix.SOL_IPV6, ipv6OffsetsAt, "ip6"
	}
	c := Chain{Family: fam, Table: "filter", Name: "FORWARD (legacy)", Hook: hookForward, Type: "filter"}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return c, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	var info xtInfo
	copy(info.Name[:], "filter")
	if err := getsockopt(fd, level, xtSoGetInfo, unsafe.Pointer(&info), unsafe.Sizeof(info)); err != nil {
		return c, fmt.Errorf("read the legacy %s filter table: %w", fam, err)
	}
	buf := make([]byte, xtEntriesHeader+int(info.Size))
	copy(buf, "filter")
	binary.NativeEndian.PutUint32(buf[xtNameLen:], info.Size)
	if err := getsockopt(fd, level, xtSoGetEntries, unsafe.Pointer(&buf[0]), uintptr(len(buf))); err != nil {
		return c, fmt.Errorf("read the legacy %s filter table's rules: %w", fam, err)
	}
	if info.ValidHooks&(1<<unix.NF_INET_FORWARD) == 0 {
		return c, nil // no FORWARD chain: nothing forwarded is filtered here
	}
	c.Drop, c.Rules, err = chainRules(buf[xtEntriesHeader:], info.HookEntry[unix.NF_INET_FORWARD], info.Underflow[unix.NF_INET_FORWARD], offsetsAt)
	return c, err
}

// chainRules walks a builtin chain of an x_tables blob: the entries from
// its hook entry up to its underflow (the policy) are its rules; the
// policy drops when its standard verdict is NF_DROP's.
func chainRules(blob []byte, entry, underflow uint32, offsetsAt int) (drop bool, rules int, err error) {
	bad := errors.New("malformed x_tables entries")
	u16 := func(at int) (int, bool) {
		if at < 0 || at+2 > len(blob) {
			return 0, false
		}
		return int(binary.NativeEndian.Uint16(blob[at:])), true
	}
	off := int(entry)
	for off < int(underflow) {
		next, ok := u16(off + offsetsAt + 2)
		if !ok || next == 0 {
			return false, 0, bad
		}
		off += next
		rules++
	}
	if off != int(underflow) {
		return false, 0, bad
	}
	target, ok := u16(off + offsetsAt)
	at := off + target + verdictAt
	if !ok || at+4 > len(blob) {
		return false, 0, bad
	}
	verdict := int32(binary.NativeEndian.Uint32(blob[at:]))
	return verdict == verdictDrop, rules, nil
}

// getsockopt is getsockopt(2) on a buffer the kernel reads and writes.
func getsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
