// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// OpenFDs counts what /proc/self/fd lists, without listing it.
func TestOpenFDs(t *testing.T) {
	before := OpenFDs()
	var fds []int
	for range 10 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if got := OpenFDs(); got != before+20 {
		t.Errorf("%d open fds after 20 more, want %d", got, before+20)
	}
	// The fallback of kernels older than 6.2 counts the same.
	if got, want := openFDsBySlot(), OpenFDs(); got != want {
		t.Errorf("counted %d open fds slot by slot, %d from the size of /proc/self/fd", got, want)
	}
	listed, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	// The listing holds its own directory fd open while it reads.
	if got := OpenFDs(); got != len(listed)-1 {
		t.Errorf("counted %d open fds, /proc/self/fd lists %d besides its own", got, len(listed)-1)
	}
}
