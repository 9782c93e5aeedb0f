package userspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

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

func TestRateLogHoldsBackAStorm(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	r := rateLog{period: time.Hour}
	for range 1000 {
		r.log(log, slog.LevelWarn, "storm")
	}
	if n := strings.Count(buf.String(), "storm"); n != 1 {
		t.Fatalf("1000 lines in one period wrote %d, want 1:\n%s", n, buf.String())
	}
	r.next = time.Time{} // the period is over
	r.log(log, slog.LevelWarn, "storm")
	if !strings.Contains(buf.String(), "similar_lines_held_back=999") {
		t.Errorf("the next line does not say how many were held back:\n%s", buf.String())
	}
}

func TestOnLocalExhaustionHook(t *testing.T) {
	calls := 0
	s := &Splitter{OnExhausted: func() { calls++ }}
	s.onLocalExhaustion(fmt.Errorf("accept: %w", unix.EMFILE))
	s.onLocalExhaustion(fmt.Errorf("dial: %w", unix.ECONNREFUSED))
	(&Splitter{}).onLocalExhaustion(unix.EMFILE) // no hook: nothing to call
	if calls != 1 {
		t.Errorf("hook called %d times, want 1 (local failures only)", calls)
	}
}
