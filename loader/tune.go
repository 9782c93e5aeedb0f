// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

const (
	pinTune     = "pepsal_tune"
	pinTuneLink = "link_tune_cgroup"
)

// LegTuning is what sock_ops sets on one leg (segments; 0 = kernel default).
type LegTuning = tuneLegTuning

// Legs of pepsal_tuning.
const (
	LegClient = 0
	LegServer = 1
)

// cgroup2Root finds where the unified cgroup hierarchy is mounted.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// attachTune loads the sock_ops program and attaches it to the root cgroup:
// initial windows have no socket option, so this is the only way to set them
// per socket. Without cgroup v2 it is skipped and the windows keep their defaults.
func attachTune(dir string, conns int) error {
	root, err := cgroup2Root()
	if err != nil {
		return nil
	}
	coll, err := loadObject(dir, loadTune, conns, pinTune)
	if err != nil {
		return err
	}
	defer coll.Close()
	prog := coll.Programs[pinTune]
	l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: ebpf.AttachCGroupSockOps, Program: prog})
	if err != nil {
		return fmt.Errorf("attach sock_ops to cgroup %s: %w", root, err)
	}
	defer l.Close()
	if err := l.Pin(filepath.Join(dir, pinTuneLink)); err != nil {
		return fmt.Errorf("pin sock_ops link: %w", err)
	}
	return nil
}

// netnsCookie identifies this network namespace the way BPF sees it.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// Tuner is the userspace side of the sock_ops tuning.
type Tuner struct {
	legs, upstream *ebpf.Map
	dir            string
}

// Tuner returns the tuning maps, or nil when sock_ops is not attached
// (no cgroup v2 on this host).
func (a *Attachment) Tuner() *Tuner {
	legs, err1 := ebpf.LoadPinnedMap(filepath.Join(a.Dir, "pepsal_tuning"), nil)
	up, err2 := ebpf.LoadPinnedMap(filepath.Join(a.Dir, "pepsal_upstream"), nil)
	if err1 != nil || err2 != nil || !exists(filepath.Join(a.Dir, pinTuneLink)) {
		legs.Close()
		up.Close()
		return nil
	}
	return &Tuner{legs: legs, upstream: up, dir: a.Dir}
}

// Close releases the maps.
func (t *Tuner) Close() error { return errors.Join(t.legs.Close(), t.upstream.Close()) }

// SetLegs writes the initial windows of both legs.
func (t *Tuner) SetLegs(client, server LegTuning) error {
	if err := t.legs.Put(uint32(LegClient), client); err != nil {
		return fmt.Errorf("write client leg tuning: %w", err)
	}
	if err := t.legs.Put(uint32(LegServer), server); err != nil {
		return fmt.Errorf("write server leg tuning: %w", err)
	}
	return nil
}

// SetPeerPort makes sock_ops tune the sockets accepted on the gateway's
// listener for terminals (port, host order) like client legs; 0: none.
func (t *Tuner) SetPeerPort(port uint16) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(t.dir, "pepsal_peerport"), nil)
	if err != nil {
		return fmt.Errorf("this attachment predates warm paths (no pepsal_peerport): pepsal detach, then run again: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint32(port)); err != nil {
		return fmt.Errorf("write pepsal_peerport: %w", err)
	}
	return nil
}

// RegisterUpstream marks a socket, before its connect, as a server leg.
func (t *Tuner) RegisterUpstream(cookie uint64) error {
	return t.upstream.Put(cookie, uint8(1))
}

// ForgetUpstream removes a server leg once its connection is over.
func (t *Tuner) ForgetUpstream(cookie uint64) { _ = t.upstream.Delete(cookie) }

// TakeDiverted returns what the classifier saw on the SYN of a diverted
// connection and deletes the entry (it was kept for sock_ops and for this).
func (a *Attachment) TakeDiverted(client, server netip.AddrPort) (DivertInfo, bool) {
	key := classifyFlowKey{
		ClientAddr: client.Addr().As16(),
		ServerAddr: server.Addr().As16(),
		ClientPort: client.Port(),
		ServerPort: server.Port(),
		Family:     unix.AF_INET6,
	}
	if client.Addr().Is4() {
		key.Family = unix.AF_INET
	}
	var info DivertInfo
	if err := a.maps.PepsalDiverted.LookupAndDelete(key, &info); err != nil {
		return info, false
	}
	return info, true
}

// DivertInfo is what the classifier recorded about a diverted SYN.
type DivertInfo = classifyDivertInfo
