// SPDX-License-Identifier: Apache-2.0

package harness

import "testing"

func TestTailBuffer(t *testing.T) {
	tb := &TailBuffer{Max: 8}
	tb.Write([]byte("hello "))
	tb.Write([]byte("world"))
	if tb.String() != "lo world" {
		t.Errorf("tail %q", tb.String())
	}
	all := &TailBuffer{}
	all.Write([]byte("hello "))
	all.Write([]byte("world"))
	if all.String() != "hello world" {
		t.Errorf("unbounded %q", all.String())
	}
}
