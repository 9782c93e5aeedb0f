// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestTestbedFindsThePins: the test beds' sweep removes the pins a killed
// bed's namespaces left without importing the loader (whose tests import the
// beds), so it has its own patterns for where they are: they must find a
// namespace's pin directory and an attach's temporary one, and nothing of
// another namespace.
func TestTestbedFindsThePins(t *testing.T) {
	const ino = 4026532000
	globs := testbed.PinDirGlobs(ino)
	found := func(path string) bool {
		for _, g := range globs {
			if ok, err := filepath.Match(g, path); err != nil {
				t.Fatalf("pattern %q: %v", g, err)
			} else if ok {
				return true
			}
		}
		return false
	}
	for _, p := range []string{PinDirOf(ino), fmt.Sprintf("%s%s%d", PinDirOf(ino), tmpPinSuffix, 4242)} {
		if !found(p) {
			t.Errorf("the test beds' patterns %q miss %s", globs, p)
		}
	}
	other := PinDirOf(ino * 10)
	for _, p := range []string{other, fmt.Sprintf("%s%s%d", other, tmpPinSuffix, 4242)} {
		if found(p) {
			t.Errorf("the test beds' patterns %q take another namespace's %s", globs, p)
		}
	}
}
