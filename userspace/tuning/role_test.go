// SPDX-License-Identifier: Apache-2.0

package tuning

import (
	"errors"
	"reflect"
	"testing"
)

// TestRoleText: the roles read back from the texts --role takes; anything
// else is ErrBadRole and changes nothing.
func TestRoleText(t *testing.T) {
	for _, r := range []Role{NoRole, Gateway, Terminal} {
		back := Role(9)
		if err := back.UnmarshalText([]byte(r.String())); err != nil || back != r {
			t.Errorf("%q reads back as %v (%v)", r, back, err)
		}
	}
	r := Gateway
	if err := r.UnmarshalText([]byte("satellite")); !errors.Is(err, ErrBadRole) || r != Gateway {
		t.Errorf("satellite: %v, role now %q", err, r)
	}
	if Gateway.Tuning().Client.CC != "bbr" || Terminal.Tuning().Server.CC != "bbr" || !reflect.DeepEqual(NoRole.Tuning(), Tuning{}) {
		t.Error("presets lost their long leg")
	}
}
