package loader

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing is the policy routing that makes marked (diverted) packets local, so
// that they reach sk_lookup: `ip rule fwmark M lookup T` plus
// `ip route add local default dev lo table T`, for IPv4 and IPv6.
type Routing struct {
	Mark     uint32
	Table    int
	Priority int
}

var families = []int{unix.AF_INET, unix.AF_INET6}

func (r Routing) rule(family int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = family
	rule.Mark = r.Mark
	mask := r.Mark
	rule.Mask = &mask
	rule.Table = r.Table
	rule.Priority = r.Priority
	return rule
}

func (r Routing) route(family int, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if family == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    family,
		Dst:       dst,
		Type:      unix.RTN_LOCAL,
		Table:     r.Table,
		LinkIndex: lo,
		Scope:     netlink.SCOPE_HOST,
	}
}

// Install adds the rules and routes that are missing; existing ones are kept,
// which makes attaching twice harmless.
func (r Routing) Install() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	for _, fam := range families {
		if err := netlink.RouteReplace(r.route(fam, lo.Attrs().Index)); err != nil {
			return fmt.Errorf("add local default route to table %d (%s): %w", r.Table, famName(fam), err)
		}
		found, err := r.rules(fam)
		if err != nil {
			return err
		}
		if len(found) == 0 {
			if err := netlink.RuleAdd(r.rule(fam)); err != nil {
				return fmt.Errorf("add rule fwmark %#x lookup %d (%s): %w", r.Mark, r.Table, famName(fam), err)
			}
		}
	}
	return nil
}

// Remove deletes every rule and route that Install adds; missing ones are fine.
func (r Routing) Remove() error {
	var errs []error
	for _, fam := range families {
		found, err := r.rules(fam)
		if err != nil {
			errs = append(errs, err)
		}
		for i := range found {
			if err := netlink.RuleDel(&found[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete rule %s: %w", found[i], err))
			}
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes of table %d: %w", r.Table, err))
		}
		for i := range routes {
			if routes[i].Type != unix.RTN_LOCAL || !isDefault(routes[i].Dst) {
				continue // not ours: the table may be shared with something else
			}
			if err := netlink.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", routes[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// Present reports which of the rules and routes exist (for status and tests).
func (r Routing) Present() (rules, routes int, err error) {
	for _, fam := range families {
		found, err := r.rules(fam)
		if err != nil {
			return 0, 0, err
		}
		rules += len(found)
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return 0, 0, err
		}
		for _, rt := range rs {
			if rt.Type == unix.RTN_LOCAL && isDefault(rt.Dst) {
				routes++
			}
		}
	}
	return rules, routes, nil
}

func (r Routing) rules(family int) ([]netlink.Rule, error) {
	all, err := netlink.RuleList(family)
	if err != nil {
		return nil, fmt.Errorf("list %s rules: %w", famName(family), err)
	}
	var ours []netlink.Rule
	for _, rule := range all {
		if rule.Table == r.Table && rule.Mark == r.Mark && rule.Priority == r.Priority {
			ours = append(ours, rule)
		}
	}
	return ours, nil
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func famName(family int) string {
	if family == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}
