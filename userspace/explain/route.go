// SPDX-License-Identifier: Apache-2.0

package explain

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Locate fills f's ingress interface and route from this namespace's
// routing: the SYN arrives on iface, or where the route back to f.Src
// leaves (symmetric routing), and dst is looked up as the kernel forwards
// a packet that came in there (classify.c asks bpf_fib_lookup the same).
func Locate(f *Flow, iface string) error {
	if iface != "" {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface, err)
		}
		f.Ingress, f.Name = l.Attrs().Index, iface
	} else {
		rs, err := netlink.RouteGet(net.IP(f.Src.Unmap().AsSlice()))
		if err != nil || len(rs) == 0 {
			return fmt.Errorf("no route back to %s: cannot tell where its SYN arrives (give --iface): %w", f.Src, err)
		}
		if rs[0].Type == unix.RTN_LOCAL {
			f.Ingress = 0 // the router's own address
			return nil
		}
		l, err := netlink.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return fmt.Errorf("interface of the route back to %s: %w", f.Src, err)
		}
		f.Ingress, f.Name = rs[0].LinkIndex, l.Attrs().Name
	}
	f.Route = forwardRoute(f.Src, f.Dst.Addr(), f.Ingress)
	return nil
}

// forwardRoute is what routing does with a packet from src to dst that
// arrived on ingress: `ip route get DST from SRC iif IF`. A lookup refused
// for its source (reverse-path filtering, which bpf_fib_lookup does not
// apply) is asked again without the source's interface.
func forwardRoute(src, dst netip.Addr, ingress int) Route {
	ip := net.IP(dst.Unmap().AsSlice())
	rs, err := netlink.RouteGetWithOptions(ip, &netlink.RouteGetOptions{IifIndex: ingress, SrcAddr: net.IP(src.Unmap().AsSlice())})
	if errors.Is(err, unix.EXDEV) {
		rs, err = netlink.RouteGet(ip)
	}
	if err != nil || len(rs) == 0 {
		return RouteUnroutable
	}
	switch rs[0].Type {
	case unix.RTN_UNICAST:
		return RouteOnward
	case unix.RTN_LOCAL, unix.RTN_BROADCAST:
		return RouteLocal
	}
	return RouteUnroutable
}
