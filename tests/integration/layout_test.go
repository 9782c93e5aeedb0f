// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestOtherLayoutRefused: pins made by a pepsal with another map layout (an
// older or newer version) are never read as this version's: status, run and
// attach refuse them with one line that says to detach, and detach still
// removes everything.
// In both tc modes: a tcx link goes with its pin, a clsact filter must be
// found from the interfaces the pins record.
func TestOtherLayoutRefused(t *testing.T) {
	for _, mode := range []string{"tcx", "clsact"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "tcx" {
				requireTCX(t)
			}
			testOtherLayoutRefused(t, mode)
		})
	}
}

func testOtherLayoutRefused(t *testing.T, tcMode string) {
	b := newBed(t, defaultSuite())
	before := netState(t, b.Router)
	if r := b.pepsal("attach", "--iface", testbed.RouterClientIf, "--tc-mode", tcMode); r.code != 0 {
		t.Fatalf("attach: %d %s", r.code, r.stderr)
	}
	var layoutPin string
	for _, p := range strings.Split(pins(t, b.Router), "\n") {
		if strings.HasSuffix(p, "/pepsal_layout") {
			layoutPin = p
		}
	}
	if layoutPin == "" {
		t.Fatalf("no pepsal_layout pin among:\n%s", pins(t, b.Router))
	}
	// What a binary of layout 999 would have left.
	if out, err := exec.Command("bpftool", "map", "update", "pinned", layoutPin, "key", "0", "0", "0", "0", "value", "0xe7", "0x03", "0", "0").CombinedOutput(); err != nil {
		t.Fatalf("bpftool: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"status"}, {"run"}, {"attach", "--iface", testbed.RouterClientIf}} {
		r := b.pepsal(args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code == 0 || len(lines) != 1 || !strings.Contains(lines[0], "another pepsal version (layout 999, this binary") || !strings.Contains(lines[0], "pepsal detach") {
			t.Errorf("pepsal %s over layout 999: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if r := b.pepsal("detach"); r.code != 0 {
		t.Fatalf("detach over layout 999: %d %s", r.code, r.stderr)
	}
	if after := netState(t, b.Router); after != before {
		t.Errorf("detach over another layout left traces:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
