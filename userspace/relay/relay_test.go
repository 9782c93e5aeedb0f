// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"errors"
	"testing"
)

// TestModeText: the modes read back from the texts --relay takes; anything
// else is ErrBadRelay, in the words the CLI always used, and changes
// nothing.
func TestModeText(t *testing.T) {
	for _, m := range []Mode{ModeSplice, ModeSockmap} {
		back := Mode(9)
		if err := back.UnmarshalText([]byte(m.String())); err != nil || back != m {
			t.Errorf("%q reads back as %v (%v)", m, back, err)
		}
	}
	m := ModeSockmap
	err := m.UnmarshalText([]byte("ebpf"))
	if !errors.Is(err, ErrBadRelay) || m != ModeSockmap || err.Error() != `relay must be splice or sockmap, not "ebpf"` {
		t.Errorf("ebpf: %v, mode now %q", err, m)
	}
}
