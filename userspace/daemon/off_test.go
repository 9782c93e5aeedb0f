// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// TestChooseRelay: the kernel relay is used only when the kernel's probe and
// the verdict's attachment succeed; a kernel that cannot relay safely gives
// splice and says why; any other failure stops the daemon.
func TestChooseRelay(t *testing.T) {
	unsupported := &loader.Unsupported{Feature: "kernel relay", Why: "the kernel lacks X"}
	for _, tc := range []struct {
		asked     relay.Mode
		enable    error
		want      string
		wantOff   string
		wantErr   bool
		wantProbe bool
	}{
		{asked: relay.ModeSplice, want: "splice"},
		{asked: relay.ModeSockmap, want: "sockmap", wantProbe: true},
		{asked: relay.ModeSockmap, enable: unsupported, want: "splice", wantOff: "kernel relay off: the kernel lacks X; every connection is relayed by splice", wantProbe: true},
		{asked: relay.ModeSockmap, enable: errors.New("pin: no space"), wantErr: true, wantProbe: true},
	} {
		probed := false
		got, off, err := chooseRelay(tc.asked, func() error { probed = true; return tc.enable })
		if (err != nil) != tc.wantErr || got != tc.want || probed != tc.wantProbe {
			t.Errorf("%s, enable %v: relay %q, err %v, probed %v; want %q, error %v, probed %v", tc.asked, tc.enable, got, err, probed, tc.want, tc.wantErr, tc.wantProbe)
		}
		var offs []string
		for _, o := range off {
			offs = append(offs, o.String())
		}
		if got := strings.Join(offs, "|"); got != tc.wantOff {
			t.Errorf("%s, enable %v: off %q, want %q", tc.asked, tc.enable, got, tc.wantOff)
		}
	}
}

// TestWindowOff: a kernel that opens windows at 64 KiB at most is reported
// only when a leg asks for more, and only when the probe says so.
func TestWindowOff(t *testing.T) {
	small := &loader.Unsupported{Feature: "initial receive windows above 64 KiB", Why: "64 KiB at most"}
	asks := tuning.Tuning{Client: tuning.Leg{InitRwnd: 2048}}
	probes := 0
	probe := func(err error) func() error { return func() error { probes++; return err } }
	if got := windowOff(tuning.Tuning{Client: tuning.Leg{InitRwnd: 40}}, probe(small)); len(got) != 0 || probes != 0 {
		t.Errorf("40 segments fit a SYN's window: %v, %d probes", got, probes)
	}
	if got := windowOff(asks, probe(nil)); len(got) != 0 {
		t.Errorf("a kernel that opens large windows: %v", got)
	}
	got := windowOff(asks, probe(small))
	if len(got) != 1 || !strings.HasPrefix(got[0].String(), "initial receive windows above 64 KiB off: 64 KiB at most; ") {
		t.Errorf("a kernel that cannot: %v", got)
	}
	if got := windowOff(asks, probe(errors.New("no loopback"))); len(got) != 0 {
		t.Errorf("a probe that failed for its own reasons: %v", got)
	}
}

// TestProbeLargeInitialWindow: the probe answers (on any kernel) without
// failing for its own reasons; the integration test LegTuning checks its
// answer against the windows a split connection really gets.
func TestProbeLargeInitialWindow(t *testing.T) {
	err := ProbeLargeInitialWindow()
	var un *loader.Unsupported
	if err != nil && !errors.As(err, &un) {
		t.Fatal(err)
	}
	t.Logf("probe: %v", err)
}
