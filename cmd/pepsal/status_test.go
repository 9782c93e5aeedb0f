// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
)

// TestKernelShareText: the kernel relay's share of a connection's bytes, as
// `pepsal conns` prints it.
func TestKernelShareText(t *testing.T) {
	for _, c := range []struct {
		part, total uint64
		want        string
	}{
		{0, 0, "-"},
		{0, 100, "0%"},
		{1, 200, "0%"},
		{97, 100, "97%"},
		{100, 100, "100%"},
		{1 << 40, 1 << 41, "50%"},
	} {
		if got := share(c.part, c.total); got != c.want {
			t.Errorf("share(%d, %d) = %q, want %q", c.part, c.total, got, c.want)
		}
	}
}

// TestInterfacesText: status's lines and problems for the interfaces a
// daemon follows: attached, lost, waited for, failing.
func TestInterfacesText(t *testing.T) {
	d := &report.DaemonInfo{Interfaces: []report.IfaceHealth{
		{Name: "eth0", Ifindex: 2, Attached: true, Losses: 1, Reattached: 1, SinceSeconds: 90},
		{Name: "ppp0", Losses: 2, Reattached: 1, SinceSeconds: 5},
		{Name: "wg0"},
		{Name: "vlan7", Ifindex: 9, Error: "attach classifier to vlan7: busy"},
	}}
	var b strings.Builder
	printInterfaces(&b, d)
	for _, want := range []string{
		"follows:   eth0 attached (ifindex 2) for 1m30s; lost 1 times, re-attached 1 times\n",
		"follows:   ppp0 NOT ATTACHED for 5s, nothing split on it; lost 2 times, re-attached 1 times\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in:\n%s", want, b.String())
		}
	}
	problems := ifaceProblems(d)
	if len(problems) != 3 || !strings.Contains(problems[0], "ppp0 no longer exists") ||
		!strings.Contains(problems[1], "wg0 does not exist yet") || !strings.Contains(problems[2], "vlan7 (ifindex 9): the classifier is not attached") {
		t.Errorf("problems %q", problems)
	}
	if ifaceProblems(nil) != nil {
		t.Error("problems without a daemon")
	}
}

// TestStatusPolicyText: the ports and exclusions read from the
// classifier's maps, as `pepsal status` prints them; IPv4 prefixes stored
// v4-mapped are shown as IPv4.
func TestStatusPolicyText(t *testing.T) {
	for _, c := range []struct {
		p    *report.PolicyReport
		want string
	}{
		{nil, ""},
		{&report.PolicyReport{AllPorts: true}, "ports:     all\nexclude:   none\n"},
		{policyFrom(loader.ClassifierState{Ports: []uint16{80, 443}, Exclude: []netip.Prefix{
			netip.MustParsePrefix("::ffff:10.0.0.0/104"), netip.MustParsePrefix("2001:db8::/32")}}),
			"ports:     80,443\nexclude:   10.0.0.0/8, 2001:db8::/32\n"},
	} {
		var b strings.Builder
		printPolicy(&b, c.p)
		if b.String() != c.want {
			t.Errorf("got %q, want %q", b.String(), c.want)
		}
	}
}

// TestStatusRoleText: version and role always; presets and --deny when
// the daemon has them.
func TestStatusRoleText(t *testing.T) {
	var b strings.Builder
	printRole(&b, &report.DaemonInfo{Version: "dev", Presets: []string{"client leg: Linux defaults"}})
	want := "version:   dev\nrole:      none\npreset:    client leg: Linux defaults\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// TestStatusRTOBoundText: the retransmission bound's counts follow the
// presets (whose lines say the bound per leg).
func TestStatusRTOBoundText(t *testing.T) {
	var b strings.Builder
	printRole(&b, &report.DaemonInfo{Version: "dev", Role: "gateway", Presets: []string{"client leg: rto-max 3s"},
		RTOBound: &report.RTOBound{Client: "3s", Server: "off", Set: 7, Failed: 1}})
	want := "version:   dev\nrole:      gateway\npreset:    client leg: rto-max 3s\nrto-max:   7 legs bounded, 0 short (auto), 0 without an RTT yet (auto), 1 refused\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
