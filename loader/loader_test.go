// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"net/netip"
	"os/exec"
	"testing"
)

func TestExcludeKeyMapsIPv4(t *testing.T) {
	k := excludeKey(netip.MustParsePrefix("10.1.2.3/24"))
	if k.Prefixlen != 120 {
		t.Errorf("prefixlen %d, want 96+24", k.Prefixlen)
	}
	want := netip.MustParseAddr("::ffff:10.1.2.0").As16()
	if k.Addr != want {
		t.Errorf("addr %v, want masked v4-mapped %v", k.Addr, want)
	}
	k6 := excludeKey(netip.MustParsePrefix("fd00::1/64"))
	if k6.Prefixlen != 64 || k6.Addr != netip.MustParseAddr("fd00::").As16() {
		t.Errorf("v6 key %+v", k6)
	}
}

// TestExcludeKeysKeepFamilies: the classifier looks IPv4 destinations up
// v4-mapped, so a native IPv6 prefix stored as it is would exclude every
// IPv4 destination when it covers ::ffff:0:0/96 (::/0, ::/64). Its keys
// cover the same IPv6 space but the mapped range; an IPv4 prefix, or its
// mapped form, stays one key.
func TestExcludeKeysKeepFamilies(t *testing.T) {
	covered := func(keys []classifyExcludeKey, a netip.Addr) bool {
		for _, k := range keys {
			if netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen)).Contains(netip.AddrFrom16(a.As16())) {
				return true
			}
		}
		return false
	}
	v4 := []string{"10.1.2.3", "0.0.0.0", "255.255.255.255", "::ffff:192.0.2.1"}
	for _, c := range []struct {
		prefix string
		keys   int
		in     []string // destinations excluded
		out    []string // destinations not excluded
	}{
		{"::/0", 96, []string{"::", "::1", "2001:db8::1", "::fffe:1.2.3.4", "::1:ffff:1.2.3.4", "64:ff9b::1.2.3.4", "ffff::"}, v4},
		{"::/64", 32, []string{"::1", "::1:ffff:1.2.3.4", "::fffe:0:0"}, append([]string{"2001:db8::1"}, v4...)},
		{"::fff0:0:0/92", 4, []string{"::fff0:0:1", "::fffe:ffff:ffff"}, append([]string{"::1"}, v4...)},
		{"::/96", 1, []string{"::1", "::ffff"}, v4},
		{"fd00::/8", 1, []string{"fd00::1"}, append([]string{"::1"}, v4...)},
		{"2001:db8::1/128", 1, []string{"2001:db8::1"}, v4},
		{"10.0.0.0/8", 1, []string{"10.1.2.3"}, []string{"11.0.0.1", "::a01:203"}},
		{"::ffff:10.0.0.0/104", 1, []string{"10.1.2.3"}, []string{"11.0.0.1", "::a01:203"}},
		{"::ffff:0:0/96", 1, v4, []string{"::1", "2001:db8::1"}},
		{"0.0.0.0/0", 1, v4, []string{"::1", "2001:db8::1"}},
	} {
		keys := ExcludeKeys(netip.MustParsePrefix(c.prefix))
		if len(keys) != c.keys {
			t.Errorf("%s: %d keys, want %d", c.prefix, len(keys), c.keys)
		}
		for _, a := range c.in {
			if !covered(keys, netip.MustParseAddr(a)) {
				t.Errorf("%s does not exclude %s", c.prefix, a)
			}
		}
		for _, a := range c.out {
			if covered(keys, netip.MustParseAddr(a)) {
				t.Errorf("%s excludes %s", c.prefix, a)
			}
		}
	}
}

func TestCounterNamesMatchC(t *testing.T) {
	for in, want := range map[string]string{"SynDiverted": "syn_diverted", "PktNotTcp": "pkt_not_tcp", "SteerAssignFailed": "steer_assign_failed"} {
		if got := snake(in); got != want {
			t.Errorf("snake(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestCheckKernelPasses(t *testing.T) {
	needBPF(t) // probing loads programs
	// This machine has every feature; a failure names the missing one.
	if err := CheckKernel(); err != nil {
		t.Fatal(err)
	}
}

// TestOwnerAliveTellsAReusedPidApart: the pinned owner record names its
// process as procid does (pid and start time).
func TestOwnerAliveTellsAReusedPidApart(t *testing.T) {
	me, err := self()
	if err != nil {
		t.Fatal(err)
	}
	if !me.alive() {
		t.Fatalf("this process (%+v) is not alive", me)
	}
	reused := me
	reused.StartTime++ // same pid, another process
	if reused.alive() {
		t.Error("a pid with another start time counts as the owner")
	}
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	if (owner{PID: uint32(child.Process.Pid), StartTime: me.StartTime}).alive() {
		t.Error("an exited process counts as alive")
	}
	if (owner{}).alive() {
		t.Error("no owner counts as alive")
	}
}

// TestOneLineJoinsErrors: an errors.Join error prints on one line.
func TestOneLineJoinsErrors(t *testing.T) {
	err := errors.Join(errors.New("a"), errors.New("b"))
	if got := oneLine(err); got != "a; b" {
		t.Errorf("oneLine = %q", got)
	}
}
