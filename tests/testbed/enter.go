// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// NewTestNS is NewNS for a test: a failure is fatal and the namespace is
// deleted when the test ends, failed or not.
func NewTestNS(tb testing.TB, prefix string) *NS {
	tb.Helper()
	ns, err := NewNS(prefix)
	if err != nil {
		tb.Fatalf("new network namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := ns.Close(); err != nil {
			tb.Error(err)
		}
	})
	return ns
}

// Enter moves the calling goroutine, locked to its thread, into the
// namespace until leave: sockets, netlink's default handle, /proc/sys and
// BPF_PROG_TEST_RUN all act there meanwhile. Leave returns the thread to the
// namespace it left and unlocks it; if that fails, the thread stays locked
// and dies with its goroutine, so no other goroutine ever runs in the wrong
// namespace. Do, which leaves the caller where it is, is for everything else.
func (n *NS) Enter() (leave func(), err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open own network namespace: %w", err)
	}
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	return func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}, nil
}

// EnterForTest is Enter until the test ends: the rest of the test's
// goroutine runs in the namespace. A subtest runs on a goroutine of its own,
// which enters by itself.
func (n *NS) EnterForTest(tb testing.TB) {
	tb.Helper()
	leave, err := n.Enter()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(leave)
}
