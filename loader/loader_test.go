package loader

import (
	"net/netip"
	"testing"
)

func TestExcludeKeyMapsIPv4(t *testing.T) {
	k := ExcludeKey(netip.MustParsePrefix("10.1.2.3/24"))
	if k.Prefixlen != 120 {
		t.Errorf("prefixlen %d, want 96+24", k.Prefixlen)
	}
	want := netip.MustParseAddr("::ffff:10.1.2.0").As16()
	if k.Addr != want {
		t.Errorf("addr %v, want masked v4-mapped %v", k.Addr, want)
	}
	k6 := ExcludeKey(netip.MustParsePrefix("fd00::1/64"))
	if k6.Prefixlen != 64 || k6.Addr != netip.MustParseAddr("fd00::").As16() {
		t.Errorf("v6 key %+v", k6)
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
	// This machine has every feature; a failure names the missing one.
	if err := CheckKernel(); err != nil {
		t.Fatal(err)
	}
}
