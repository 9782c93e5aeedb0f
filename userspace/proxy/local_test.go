// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIsLocalFailure(t *testing.T) {
	dialErr := func(e error) error {
		return fmt.Errorf("dial 10.0.0.1:80: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", e)})
	}
	for _, tc := range []struct {
		err   error
		local bool
	}{
		{dialErr(unix.EMFILE), true},
		{dialErr(unix.ENFILE), true},
		{dialErr(unix.ENOBUFS), true},
		{dialErr(unix.ENOMEM), true},
		{dialErr(unix.EADDRNOTAVAIL), true},
		{fmt.Errorf("socket: %w", unix.EMFILE), true}, // fast open's own socket()
		{dialErr(unix.ECONNREFUSED), false},
		{dialErr(unix.EHOSTUNREACH), false},
		{dialErr(unix.ETIMEDOUT), false},
		{context.DeadlineExceeded, false},
		{errors.New("other"), false},
	} {
		if got := IsLocalFailure(tc.err); got != tc.local {
			t.Errorf("IsLocalFailure(%v) = %v, want %v", tc.err, got, tc.local)
		}
	}
}

func TestOnLocalExhaustionHook(t *testing.T) {
	calls := 0
	s := &Pipeline{OnExhausted: func() { calls++ }}
	s.onLocalExhaustion(fmt.Errorf("accept: %w", unix.EMFILE))
	s.onLocalExhaustion(fmt.Errorf("dial: %w", unix.ECONNREFUSED))
	(&Pipeline{}).onLocalExhaustion(unix.EMFILE) // no hook: nothing to call
	if calls != 1 {
		t.Errorf("hook called %d times, want 1 (local failures only)", calls)
	}
}
