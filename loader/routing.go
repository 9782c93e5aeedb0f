// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing is the policy routing that makes marked (diverted) packets local, so
// that they reach sk_lookup: `ip rule fwmark M/0xffffffff lookup T` plus
// `ip route add local default dev lo table T`, for IPv4 and IPv6.
type Routing struct {
	Mark     uint32
	Table    int
	Priority int
}

// Defaults for the policy routing; chosen to stay clear of common marks and tables.
const (
	DefaultMark         = 0x5e9a1
	DefaultTable        = 5091
	DefaultRulePriority = 5091
)

var families = []int{unix.AF_INET, unix.AF_INET6}

// fullMask makes the rule compare the whole mark: a mask of the mark's own
// bits would route locally any mark that has them, among others (a firewall's
// or mwan3's mark sharing some of pepsal's bits, a mark of all ones), and the
// packets other software marks are not pepsal's to take.
const fullMask = ^uint32(0)

func (r Routing) rule(family int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = family
	rule.Mark = r.Mark
	mask := fullMask
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
// which makes attaching twice harmless. undo removes what it added; on error
// it has already run.
func (r Routing) Install() (undo func() error, err error) {
	var added []func() error
	rollback := func() error { // not the named result: a failed return has set that to nil
		var errs []error
		for i := len(added) - 1; i >= 0; i-- {
			errs = append(errs, added[i]())
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			_ = rollback()
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	for _, fam := range families {
		had, err := r.localDefaults(fam)
		if err != nil {
			return nil, err
		}
		route := r.route(fam, lo.Attrs().Index)
		if err := netlink.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("add local default route to table %d (%s): %w", r.Table, famName(fam), err)
		}
		if len(had) == 0 {
			added = append(added, func() error { return netlink.RouteDel(route) })
		}
		undo, err := r.ensureRule(fam)
		if err != nil {
			return nil, err
		}
		if undo != nil {
			added = append(added, undo)
		}
	}
	return rollback, nil
}

// ensureRule adds the family's rule unless it is there. A rule of ours that
// compares only some bits of the mark (as pepsal's did before the mask was
// full) is replaced. undo removes an added rule; nil when none was added.
func (r Routing) ensureRule(family int) (undo func() error, err error) {
	found, err := r.rules(family)
	if err != nil {
		return nil, err
	}
	have := false
	for i := range found {
		if exactMask(found[i]) {
			have = true
			continue
		}
		if err := netlink.RuleDel(&found[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("replace rule %s, which matches marks it should not: %w", found[i], err)
		}
	}
	if have {
		return nil, nil
	}
	rule := r.rule(family)
	if err := netlink.RuleAdd(rule); err != nil {
		return nil, fmt.Errorf("add rule fwmark %#x lookup %d (%s): %w", r.Mark, r.Table, famName(family), err)
	}
	return func() error { return netlink.RuleDel(rule) }, nil
}

// exactMask says whether rule compares the whole mark (no mask given is the
// kernel's full one).
func exactMask(rule netlink.Rule) bool {
	return rule.Mask == nil || *rule.Mask == fullMask
}

// localDefaults lists the local default routes of the table (Install's).
func (r Routing) localDefaults(family int) ([]netlink.Route, error) {
	rs, err := netlink.RouteListFiltered(family, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", r.Table, err)
	}
	var ours []netlink.Route
	for _, rt := range rs {
		if rt.Type == unix.RTN_LOCAL && isDefault(rt.Dst) {
			ours = append(ours, rt)
		}
	}
	return ours, nil
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
		// Only the local default routes: the table may be shared with something else.
		routes, err := r.localDefaults(fam)
		if err != nil {
			errs = append(errs, err)
		}
		for i := range routes {
			if err := netlink.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", routes[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// Present reports which of the rules and routes exist (for status and
// tests); a rule with a partial mask does not count.
func (r Routing) Present() (rules, routes int, err error) {
	for _, fam := range families {
		found, err := r.rules(fam)
		if err != nil {
			return 0, 0, err
		}
		for _, rule := range found {
			if exactMask(rule) {
				rules++
			}
		}
		rs, err := r.localDefaults(fam)
		if err != nil {
			return 0, 0, err
		}
		routes += len(rs)
	}
	return rules, routes, nil
}

// rules lists the family's rules of ours (by mark, table and priority),
// whatever their mask.
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
