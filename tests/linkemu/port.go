// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// port is one bridged interface: a receive socket that sees every frame
// arriving on it, and a send-only socket (protocol 0 receives nothing).
type port struct {
	name    string
	ifindex int
	rx      *os.File
	tx      int
}

func openPort(name string) (p *port, err error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	if err := disableOffloads(name); err != nil {
		slog.Warn("linkemu: offloads left on", "if", name, "err", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("linkemu: cannot disable IPv6", "if", name, "err", err)
	}
	p = &port{name: name, ifindex: ifi.Index, tx: -1}
	defer func() {
		if err != nil {
			p.close()
		}
	}()

	// Protocol 0 at creation: nothing is queued until bind picks the interface.
	rx, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("rx socket on %s: %w", name, err)
	}
	p.rx = os.NewFile(uintptr(rx), "linkemu-rx-"+name)
	for _, o := range []struct {
		level, opt, val int
		what            string
	}{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		// What we write on the other port must not come back as input.
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rxSockBuf, "SO_RCVBUFFORCE"},
	} {
		if err := unix.SetsockoptInt(rx, o.level, o.opt, o.val); err != nil {
			return nil, fmt.Errorf("%s on %s: %w", o.what, name, err)
		}
	}
	if err := unix.Bind(rx, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("bind rx on %s: %w", name, err)
	}
	// Promiscuous: a real NIC would otherwise filter frames not addressed to it.
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(rx, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return nil, fmt.Errorf("promiscuous %s: %w", name, err)
	}

	if p.tx, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("tx socket on %s: %w", name, err)
	}
	if err := unix.SetsockoptInt(p.tx, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, txSockBuf); err != nil {
		return nil, fmt.Errorf("SO_SNDBUFFORCE on %s: %w", name, err)
	}
	if err := unix.Bind(p.tx, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("bind tx on %s: %w", name, err)
	}
	return p, nil
}

func (p *port) close() {
	if p.rx != nil {
		p.rx.Close()
	}
	if p.tx >= 0 {
		unix.Close(p.tx)
		p.tx = -1
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
