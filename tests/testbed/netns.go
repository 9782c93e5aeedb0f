// SPDX-License-Identifier: Apache-2.0

// Package testbed builds pepsal's test networks from Go: named network
// namespaces, veth pairs, addresses and routes, all through netlink.
package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace (visible as /run/netns/Name, like `ip netns add`).
type NS struct {
	Name string
}

// Path is the bind-mounted namespace file, usable with nsenter --net=.
func (n *NS) Path() string { return filepath.Join("/run/netns", n.Name) }

// NewNS creates a fresh named namespace with lo up. The name gets a random suffix
// so that concurrent or leftover test beds never collide.
func NewNS(prefix string) (*NS, error) {
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	ns := &NS{Name: prefix + "-" + hex.EncodeToString(suffix)}
	if err := sharedNetnsDir(); err != nil {
		return nil, err
	}
	err := onLockedThread(func() error {
		h, err := netns.NewNamed(ns.Name) // switches this thread into it
		if err != nil {
			return fmt.Errorf("create netns %s: %w", ns.Name, err)
		}
		h.Close()
		// No duplicate address detection: addresses (link-local ones too) are
		// usable at once, instead of "no route to host" for the first second.
		for _, key := range []string{"all", "default"} {
			p := "/proc/sys/net/ipv6/conf/" + key + "/accept_dad"
			if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
				return fmt.Errorf("disable DAD in %s: %w", ns.Name, err)
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		return nil, err
	}
	if err := recordOwner(ns.Name); err != nil {
		return nil, errors.Join(err, ns.Close())
	}
	return ns, nil
}

var netnsDirOnce struct {
	sync.Once
	err error
}

// sharedNetnsDir makes /run/netns a mount point of its own, as `ip netns
// add` does the first time it runs. Otherwise the first `ip netns add` (a
// test, a reference PEP's script) bind-mounts the directory over itself and
// hides the namespaces made before it, which can then never be deleted
// ("device or resource busy").
func sharedNetnsDir() error {
	netnsDirOnce.Do(func() {
		const dir = "/run/netns"
		if err := os.MkdirAll(dir, 0o755); err != nil {
			netnsDirOnce.err = fmt.Errorf("create %s: %w", dir, err)
			return
		}
		if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err == nil {
			return // already a mount point
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			netnsDirOnce.err = fmt.Errorf("bind-mount %s on itself: %w", dir, err)
			return
		}
		if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			netnsDirOnce.err = fmt.Errorf("make %s shared: %w", dir, err)
		}
	})
	return netnsDirOnce.err
}

// Close deletes the namespace; interfaces inside it go with it.
func (n *NS) Close() error {
	var st unix.Stat_t
	statErr := unix.Stat(n.Path(), &st)
	if err := netns.DeleteNamed(n.Name); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	forgetOwner(n.Name)
	if statErr == nil { // what a daemon killed inside it left
		return removeControlDir(st.Ino)
	}
	return nil
}

// Do runs fn on an OS thread that has entered the namespace. Sockets created
// inside fn belong to the namespace and may be used from anywhere afterwards.
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", n.Name, err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.Name, err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a dedicated locked thread that is thrown away
// afterwards, so a namespace switch can never leak into other goroutines.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the runtime kills the thread when the goroutine exits.
		errc <- fn()
	}()
	return <-errc
}

// Command runs a program inside the namespace with nsenter, which changes only
// the network namespace (bpffs under /sys/fs/bpf stays shared, unlike ip netns exec).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Sysctl writes /proc/sys/<key> (dots as slashes) from inside the namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// ReadSysctl reads /proc/sys/<key> (dots as slashes) from inside the namespace.
func (n *NS) ReadSysctl(key string) (string, error) {
	var v []byte
	err := n.Do(func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	return strings.TrimSpace(string(v)), err
}

// Handle returns a netlink handle bound to the namespace.
func (n *NS) Handle() (*netlink.Handle, error) {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

// Veth creates a veth pair, aName in a and bName in b, both up.
func Veth(a *NS, aName string, b *NS, bName string) error {
	ha, err := netns.GetFromName(a.Name)
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := netns.GetFromName(b.Name)
	if err != nil {
		return err
	}
	defer hb.Close()
	nla, err := netlink.NewHandleAt(ha)
	if err != nil {
		return err
	}
	defer nla.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(hb),
	}
	if err := nla.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	for _, side := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		if err := side.ns.LinkUp(side.name); err != nil {
			return err
		}
	}
	return nil
}

// LinkUp sets an interface up.
func (n *NS) LinkUp(name string) error {
	h, l, err := n.link(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.LinkSetUp(l)
}

// link finds interface name in n, with a netlink handle there that the
// caller closes.
func (n *NS) link(name string) (*netlink.Handle, netlink.Link, error) {
	h, err := n.Handle()
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("%s in %s: %w", name, n.Name, err)
	}
	return h, l, nil
}

// AddAddr adds an address in CIDR form; IPv6 addresses skip duplicate address
// detection so that they are usable at once.
func (n *NS) AddAddr(ifname, cidr string) error {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	h, l, err := n.link(ifname)
	if err != nil {
		return err
	}
	defer h.Close()
	if addr.IP.To4() == nil {
		addr.Flags |= 0x02 // IFA_F_NODAD
	}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("addr %s on %s in %s: %w", cidr, ifname, n.Name, err)
	}
	if addr.IP.To4() != nil {
		return nil
	}
	// The kernel adds an IPv6 address's local route from a work queue, a
	// moment later: wait for it, or a test's "before" snapshot of the routes
	// may miss it and its "after" one show it.
	local := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: &net.IPNet{IP: addr.IP, Mask: net.CIDRMask(128, 128)}}
	for deadline := time.Now().Add(2 * time.Second); ; {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6, local, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err == nil && len(routes) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addr %s on %s in %s: no local route after 2 s", cidr, ifname, n.Name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// DefaultRoute adds a default route via gw (v4 or v6 by the gateway's family).
func (n *NS) DefaultRoute(gw string) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	ip := net.ParseIP(gw)
	if ip == nil {
		return fmt.Errorf("bad gateway %q", gw)
	}
	r := &netlink.Route{Gw: ip}
	if ip.To4() == nil {
		r.Family = netlink.FAMILY_V6
	} else {
		r.Family = netlink.FAMILY_V4
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("default via %s in %s: %w", gw, n.Name, err)
	}
	return nil
}

// Route adds a route to dst (CIDR) via gw.
func (n *NS) Route(dst, gw string) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{Dst: ipnet, Gw: net.ParseIP(gw)}); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", dst, gw, n.Name, err)
	}
	return nil
}
