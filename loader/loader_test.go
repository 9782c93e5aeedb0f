package loader

import (
	"errors"
	"net/netip"
	"os/exec"
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
