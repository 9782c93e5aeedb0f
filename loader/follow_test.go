// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"slices"
	"strings"
	"testing"
)

// TestWanted: the interfaces followed by name are those given, each once,
// return-only where it is only a --return-iface.
func TestWanted(t *testing.T) {
	cfg := Config{Ifaces: []string{"eth0", "ppp0"}, ReturnIfaces: []string{"ppp0", "wan0"}}
	want := []Wanted{{Name: "eth0"}, {Name: "ppp0"}, {Name: "wan0", ReturnOnly: true}}
	if got := cfg.Wanted(); !slices.Equal(got, want) {
		t.Errorf("Wanted() = %+v, want %+v", got, want)
	}
}

// TestTargetsWait: an interface that does not exist is an error, unless
// the attachment waits for it (WaitIfaces): then it is left out.
func TestTargetsWait(t *testing.T) {
	cfg := Config{Ifaces: []string{"lo", "nosuch0"}}
	if _, err := cfg.targets(); err == nil || !strings.Contains(err.Error(), `unknown interface "nosuch0"`) {
		t.Errorf("targets() without waiting: %v", err)
	}
	cfg.WaitIfaces = true
	got, err := cfg.targets()
	if err != nil || len(got) != 1 || got[0].name != "lo" || got[0].returnOnly {
		t.Errorf("targets() waiting: %+v, %v", got, err)
	}
}
