// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/tuning"
)

func TestParsePorts(t *testing.T) {
	good := map[string][]uint16{
		"":            nil,
		"all":         nil,
		"80":          {80},
		"80,443":      {80, 443},
		" 8000-8002 ": {8000, 8001, 8002},
		"22,20-22":    {22, 20, 21},
		"65535":       {65535},
	}
	for in, want := range good {
		got, err := parsePorts(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("parsePorts(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "65536", "http", "80,", "9-1", "1-2-3", "-5"} {
		if _, err := parsePorts(in); err == nil {
			t.Errorf("parsePorts(%q) accepted", in)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3/8":  "10.0.0.0/8",
		"192.0.2.1":   "192.0.2.1/32",
		"2001:db8::1": "2001:db8::1/128",
		"fd00::/8":    "fd00::/8",
	} {
		got, err := parsePrefix(in)
		if err != nil || got.String() != want {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"10.0.0.0/33", "banana", "10.0.0/8", ""} {
		if _, err := parsePrefix(in); err == nil {
			t.Errorf("parsePrefix(%q) accepted", in)
		}
	}
}

// TestRunPlanDeny: --deny values reach the daemon's options as prefixes,
// in order, both families; without it the options deny nothing more.
func TestRunPlanDeny(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []netip.Prefix
	}{
		{nil, nil},
		{[]string{"--deny", "10.1.2.3/8", "--deny", "fd00::/8", "--deny", "192.0.2.7"},
			[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.7/32")}},
	} {
		p, err := planFor(t, c.args)
		if err != nil || !slices.Equal(p.opts.Deny, c.want) {
			t.Errorf("%v: deny %v, %v; want %v", c.args, p.opts.Deny, err, c.want)
		}
	}
}

// TestRunPlanFastOpenFrom: --fastopen-from reaches the listeners' fast-open
// setting, IPv4, IPv4-mapped and IPv6; the gateway role without it takes
// data in SYNs from nowhere; --max-conns-per-client is auto, off or a count.
func TestRunPlanFastOpenFrom(t *testing.T) {
	for _, c := range []struct {
		args      []string
		from      []netip.Prefix
		perClient int
	}{
		{[]string{"--role", "gateway"}, nil, -1},
		{[]string{"--fastopen", "--fastopen-from", "10.78.3.0/24", "--max-conns-per-client", "off"}, []netip.Prefix{netip.MustParsePrefix("10.78.3.0/24")}, 0},
		{[]string{"--role", "gateway", "--fastopen-from", "::ffff:10.78.3.0/120", "--fastopen-from", "fd78:3::1", "--max-conns-per-client", "64"},
			[]netip.Prefix{netip.MustParsePrefix("::ffff:10.78.3.0/120"), netip.MustParsePrefix("fd78:3::1/128")}, 64},
	} {
		p, err := planFor(t, c.args)
		fo := p.opts.Tuning.FastOpen
		if err != nil || !fo.Accept || !slices.Equal(fo.AcceptFrom, c.from) || p.perClient != c.perClient {
			t.Errorf("%v: accept %v from %v, per client %d, %v; want from %v, per client %d", c.args, fo.Accept, fo.AcceptFrom, p.perClient, err, c.from, c.perClient)
		}
	}
	if perClientLimit(-1, 20) != 0 || perClientLimit(-1, 4000) != 1000 || perClientLimit(5, 4000) != 5 || perClientLimit(0, 4000) != 0 {
		t.Error("perClientLimit does not settle auto, a count and off as documented")
	}
}

// TestRunPlanRTOMax: --rto-max lands on the role's long legs (both, by
// RTT, with auto), 0 takes it off, and --user-timeout 0 leaves a bounded
// leg the kernel's old give-up time instead of none.
func TestRunPlanRTOMax(t *testing.T) {
	auto := tuning.RTOMax{Auto: true}
	for _, c := range []struct {
		args           []string
		client, server tuning.RTOMax
	}{
		{nil, tuning.RTOMax{Auto: true, LongRTT: 150 * time.Millisecond}, tuning.RTOMax{Auto: true, LongRTT: 150 * time.Millisecond}},
		{[]string{"--role", "gateway"}, auto, tuning.RTOMax{}},
		{[]string{"--role", "terminal", "--rto-max", "3s"}, tuning.RTOMax{}, tuning.RTOMax{Fixed: 3 * time.Second}},
		{[]string{"--role", "gateway", "--rto-max", "0"}, tuning.RTOMax{}, tuning.RTOMax{}},
		{[]string{"--role", "terminal", "--rto-max", "off"}, tuning.RTOMax{}, tuning.RTOMax{}},
		{[]string{"--role", "none"}, tuning.RTOMax{}, tuning.RTOMax{}},
		{[]string{"--role", "terminal", "--user-timeout", "0"}, tuning.RTOMax{}, tuning.RTOMax{Auto: true, GiveUp: tuning.KernelGiveUp(retries2())}},
	} {
		p, err := planFor(t, c.args)
		got := [2]tuning.RTOMax{p.opts.Tuning.Client.RTOMax, p.opts.Tuning.Server.RTOMax}
		for i := range got {
			got[i].Stats = nil
		}
		if err != nil || got != [2]tuning.RTOMax{c.client, c.server} {
			t.Errorf("%v: client %+v, server %+v, %v; want %+v, %+v", c.args, got[0], got[1], err, c.client, c.server)
		}
	}
}

// planFor is what `pepsal run ARGS` would give the daemon, touching nothing.
func planFor(t *testing.T, args []string) (runPlan, error) {
	t.Helper()
	e := untouchable(t)
	var f runFlags
	cmd := runCmdInto(e, &f)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return f.plan(cmd, e)
}
