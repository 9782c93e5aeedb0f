// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// foreignMarks are marks other software on a router may set (a firewall,
// mwan3) that share bits with pepsal's testMark (0x5e9a1): none of them is
// pepsal's.
var foreignMarks = []uint32{
	testMark | 0x2,       // all of pepsal's bits and one more
	testMark | 0x3f00000, // all of them and a multi-WAN field
	^uint32(0),           // every bit
	testMark &^ 0x1,      // all but one
	0x1,                  // one of them
}

// ruleMatches is the kernel's fwmark test (fib_rule_match): the bits the
// mask covers are compared.
func ruleMatches(rule *netlink.Rule, mark uint32) bool {
	mask := ^uint32(0)
	if rule.Mask != nil {
		mask = *rule.Mask
	}
	return (mark^rule.Mark)&mask == 0
}

func maskText(rule *netlink.Rule) string {
	if rule.Mask == nil {
		return "none"
	}
	return fmt.Sprintf("%#x", *rule.Mask)
}

// TestRuleMatchesOnlyPepsalsMark: the rule built compares the whole mark.
func TestRuleMatchesOnlyPepsalsMark(t *testing.T) {
	r := Routing{Mark: testMark, Table: DefaultTable, Priority: DefaultRulePriority}
	for _, fam := range families {
		rule := r.rule(fam)
		if rule.Mask == nil || *rule.Mask != ^uint32(0) {
			t.Errorf("%s rule mask %s, want 0xffffffff", famName(fam), maskText(rule))
		}
		if !ruleMatches(rule, testMark) {
			t.Errorf("%s rule does not match pepsal's mark", famName(fam))
		}
		for _, m := range foreignMarks {
			if ruleMatches(rule, m) {
				t.Errorf("%s rule matches the foreign mark %#x", famName(fam), m)
			}
		}
	}
}

// TestRoutingForeignMarks: in a namespace with pepsal's policy routing, a
// forwarded packet with pepsal's mark is routed locally, one with a foreign
// mark is forwarded (ip route get ... iif in0 mark M); and a rule left with
// a partial mask (as an older pepsal installed it) is replaced by Install.
func TestRoutingForeignMarks(t *testing.T) {
	needBPF(t)
	ns := testbed.NewTestNS(t, "loader-routing")
	ns.EnterForTest(t)
	in0 := setupRouterNS(t) // installs Routing{Mark: testMark}
	r := Routing{Mark: testMark, Table: DefaultTable, Priority: DefaultRulePriority}
	checkMarks(t, in0)

	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		old := r.rule(fam)
		partial := r.Mark
		old.Mask = &partial
		if err := netlink.RuleAdd(old); err != nil {
			t.Fatalf("old rule: %v", err)
		}
	}
	if rules, _, err := r.Present(); err != nil || rules != 0 {
		t.Errorf("Present counts %d rules with a partial mask (%v), want 0", rules, err)
	}
	if _, err := r.Install(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		found, err := r.rules(fam)
		if err != nil || len(found) != 1 || !exactMask(found[0]) {
			t.Errorf("%s rules after Install over a partial one: %v (%v), want one with the full mask", famName(fam), found, err)
		}
	}
	checkMarks(t, in0)
}

// checkMarks asks the kernel how it routes a packet from a client on in0 to
// a server past out0 under pepsal's mark and under foreign ones.
func checkMarks(t *testing.T, in0 int) {
	t.Helper()
	for _, c := range []struct{ src, dst netip.Addr }{{clientV4, serverV4}, {clientV6, serverV6}} {
		for _, m := range append([]uint32{testMark, 0}, foreignMarks...) {
			routes, err := netlink.RouteGetWithOptions(c.dst.AsSlice(), &netlink.RouteGetOptions{
				IifIndex: in0, SrcAddr: net.IP(c.src.AsSlice()), Mark: m})
			if err != nil || len(routes) != 1 {
				t.Fatalf("route get %s from %s mark %#x: %v %v", c.dst, c.src, m, routes, err)
			}
			local := routes[0].Type == unix.RTN_LOCAL
			if want := m == testMark; local != want {
				t.Errorf("%s from %s with mark %#x: local %v (table %d), want %v", c.dst, c.src, m, local, routes[0].Table, want)
			}
		}
	}
}
