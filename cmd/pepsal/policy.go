// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pepsal/pepsal/loader"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// policyFlags are the interception flags shared by run and attach.
type policyFlags struct {
	ifaces       []string
	returnIfaces []string
	ports        string
	exclude      []string
	fwmark       uint32
	table        int
	tcMode       string
}

func (p *policyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&p.ifaces, "iface", nil, "interface whose forwarded TCP connections are split (repeatable)")
	f.StringArrayVar(&p.returnIfaces, "return-iface", nil, "interface where only replies to pepsal's own sockets are taken, not new connections (for --transparent; repeatable)")
	f.StringVar(&p.ports, "ports", "", "destination ports to intercept, e.g. 80,443,8000-8100 (default: all)")
	f.StringArrayVar(&p.exclude, "exclude", nil, "destination prefix never intercepted, e.g. 192.0.2.0/24 (repeatable)")
	f.Uint32Var(&p.fwmark, "fwmark", loader.DefaultMark, "fwmark of diverted packets")
	f.IntVar(&p.table, "route-table", loader.DefaultTable, "routing table holding the local default route (also the rule priority)")
	f.StringVar(&p.tcMode, "tc-mode", "auto", "tc attachment: auto, tcx or clsact")
	_ = f.MarkHidden("tc-mode")
}

// config validates the flags into a loader.Config, before anything is touched.
func (p *policyFlags) config() (loader.Config, error) {
	var cfg loader.Config
	ports, err := parsePorts(p.ports)
	if err != nil {
		return cfg, err
	}
	var excl []netip.Prefix
	for _, s := range p.exclude {
		pfx, err := parsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("bad --exclude %q: %w", s, err)
		}
		excl = append(excl, pfx)
	}
	if p.fwmark == 0 {
		return cfg, fmt.Errorf("--fwmark must not be 0")
	}
	if p.table <= 0 || p.table >= 253 && p.table <= 255 || p.table > 0x7fffffff {
		return cfg, fmt.Errorf("--route-table %d is reserved or out of range", p.table)
	}
	switch p.tcMode {
	case "auto", "tcx", "clsact":
	default:
		return cfg, fmt.Errorf("--tc-mode must be auto, tcx or clsact, not %q", p.tcMode)
	}
	for _, name := range append(append([]string{}, p.ifaces...), p.returnIfaces...) {
		if name == "lo" {
			return cfg, fmt.Errorf("--iface lo: loopback carries no forwarded traffic")
		}
	}
	cfg = loader.Config{
		Ifaces:       p.ifaces,
		ReturnIfaces: p.returnIfaces,
		Ports:        ports,
		Exclude:      excl,
		Routing:      loader.Routing{Mark: p.fwmark, Table: p.table, Priority: p.table},
		TCMode:       p.tcMode,
	}
	return cfg, nil
}

// parsePorts reads "80,443,8000-8100"; empty means every port.
func parsePorts(s string) ([]uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "all" {
		return nil, nil
	}
	seen := map[uint16]bool{}
	var out []uint16
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		lo, hi, isRange := strings.Cut(item, "-")
		first, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("bad --ports %q: %w", s, err)
		}
		last := first
		if isRange {
			if last, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("bad --ports %q: %w", s, err)
			}
			if last < first {
				return nil, fmt.Errorf("bad --ports %q: range %s is reversed", s, item)
			}
		}
		for p := int(first); p <= int(last); p++ {
			if !seen[uint16(p)] {
				seen[uint16(p)] = true
				out = append(out, uint16(p))
			}
		}
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return uint16(n), nil
}

// parsePrefix accepts a CIDR or a bare address (a single host).
func parsePrefix(s string) (netip.Prefix, error) {
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return pfx.Masked(), nil
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	return netip.Prefix{}, errors.New("not a CIDR prefix or address")
}

// parsePrefixes reads the values of a repeatable prefix flag; an error is
// "FLAG VALUE: why", e.g. "--deny 10.0.0.0/33: not a CIDR prefix or address".
func parsePrefixes(flag string, values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range values {
		pfx, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, s, err)
		}
		out = append(out, pfx)
	}
	return out, nil
}

// effectiveCaps says which capabilities the process holds.
func effectiveCaps() (has func(c uint) bool, err error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	return func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }, nil
}

// requireNetRaw fails unless the process may open raw sockets: the warm
// paths' outage watch pings the other pepsal and sends this host ICMP errors.
func requireNetRaw() error {
	has, err := effectiveCaps()
	if err != nil {
		return err
	}
	if !has(unix.CAP_NET_RAW) {
		return errors.New("missing CAP_NET_RAW: the warm paths' outage watch (--outage-probe) pings the other pepsal from a raw socket; run as root, add the capability, or set --outage-probe 0")
	}
	return nil
}

// requirePrivileges fails unless the process may load BPF and change networking.
func requirePrivileges() error {
	has, err := effectiveCaps()
	if err != nil {
		return err
	}
	var missing []string
	if !has(unix.CAP_NET_ADMIN) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if !has(unix.CAP_BPF) && !has(unix.CAP_SYS_ADMIN) {
		missing = append(missing, "CAP_BPF")
	}
	// The verifier lets only CAP_PERFMON programs read kernel socket
	// structures (the classifier's and the relay's lookups).
	if !has(unix.CAP_PERFMON) && !has(unix.CAP_SYS_ADMIN) {
		missing = append(missing, "CAP_PERFMON")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run as root (or with CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON)", strings.Join(missing, " and "))
	}
	return nil
}
