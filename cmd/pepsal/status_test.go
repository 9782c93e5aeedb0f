// SPDX-License-Identifier: Apache-2.0

package main

import "testing"

// TestKernelShareText: the kernel relay's share of a connection's bytes, as
// `pepsal conns` prints it.
func TestKernelShareText(t *testing.T) {
	for _, c := range []struct {
		part, total uint64
		want        string
	}{
		{0, 0, "-"},
		{0, 100, "0%"},
		{1, 200, "0%"},
		{97, 100, "97%"},
		{100, 100, "100%"},
		{1 << 40, 1 << 41, "50%"},
	} {
		if got := share(c.part, c.total); got != c.want {
			t.Errorf("share(%d, %d) = %q, want %q", c.part, c.total, got, c.want)
		}
	}
}
