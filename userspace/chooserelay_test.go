package userspace

import (
	"errors"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// TestChooseRelay: the kernel relay is used only when the kernel's probe and
// the verdict's attachment succeed; a kernel that cannot relay safely gives
// splice and says why; any other failure stops the daemon.
func TestChooseRelay(t *testing.T) {
	unsupported := &loader.Unsupported{Feature: "kernel relay", Why: "the kernel lacks X"}
	for _, tc := range []struct {
		asked     string
		enable    error
		want      string
		wantOff   string
		wantErr   bool
		wantProbe bool
	}{
		{asked: "splice", want: "splice"},
		{asked: "sockmap", want: "sockmap", wantProbe: true},
		{asked: "sockmap", enable: unsupported, want: "splice", wantOff: "kernel relay off: the kernel lacks X; every connection is relayed by splice", wantProbe: true},
		{asked: "sockmap", enable: errors.New("pin: no space"), wantErr: true, wantProbe: true},
	} {
		probed := false
		relay, off, err := chooseRelay(tc.asked, func() error { probed = true; return tc.enable })
		if (err != nil) != tc.wantErr || relay != tc.want || probed != tc.wantProbe {
			t.Errorf("%s, enable %v: relay %q, err %v, probed %v; want %q, error %v, probed %v", tc.asked, tc.enable, relay, err, probed, tc.want, tc.wantErr, tc.wantProbe)
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
