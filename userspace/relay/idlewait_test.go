// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestIdleWaiter: an armed socket runs its function once when readable, or
// once when woken, never twice and never while idle.
func TestIdleWaiter(t *testing.T) {
	w, err := NewIdleWaiter(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	ran := make(chan string, 8)
	var slot idleSlot
	arm := func(what string) {
		t.Helper()
		if err := w.arm(&slot, fds[0], func() { ran <- what }); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-ran:
			if got != want {
				t.Fatalf("ran %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q never ran", want)
		}
	}
	quiet := func() {
		t.Helper()
		select {
		case got := <-ran:
			t.Fatalf("%q ran with nothing to wake it", got)
		case <-time.After(50 * time.Millisecond):
		}
	}

	arm("first")
	quiet() // idle socket: nothing runs
	if _, err := unix.Write(fds[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	expect("first")
	w.wake(&slot) // ran already: nothing more
	quiet()

	arm("again") // still readable (level-triggered): runs at once
	expect("again")

	var b [1]byte
	if _, err := unix.Read(fds[0], b[:]); err != nil {
		t.Fatal(err)
	}
	arm("woken")
	w.wake(&slot)
	expect("woken")
	if _, err := unix.Write(fds[1], []byte("y")); err != nil {
		t.Fatal(err)
	}
	quiet() // one shot: the wake used it up
}

// TestIdleWaiterClose: Close ends the loop without a word (its error line
// is for a loop that died) and closes the epoll set; a second Close is a
// no-op.
func TestIdleWaiterClose(t *testing.T) {
	var logged bytes.Buffer
	w, err := NewIdleWaiter(slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.loopDone:
	default:
		t.Fatal("Close returned with the loop running")
	}
	if logged.Len() > 0 {
		t.Errorf("closing logged %q", logged.String())
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := unix.EpollWait(w.epfd, make([]unix.EpollEvent, 1), 0); err != unix.EBADF {
		t.Errorf("epoll set still open after Close (epoll_wait: %v)", err)
	}
}

// testSplice is a splice relay as the pipeline makes it (a pipe pool, an
// idle waiter), for one test.
func testSplice(t *testing.T) Splice {
	t.Helper()
	w, err := NewIdleWaiter(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return Splice{Pipes: &Pipes{}, Waiter: w}
}
