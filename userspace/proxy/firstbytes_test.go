// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// queued waits until c's receive queue holds n bytes (SIOCINQ).
func queued(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	nettest.WaitFor(t, "bytes never reached the receive queue", func() bool {
		var q int
		_ = sockopt.WithFD(c, func(fd int) (err error) { q, err = unix.IoctlGetInt(fd, unix.SIOCINQ); return err })
		return q >= n
	})
}

// firstBytes: nothing from a client that waits for the server (it speaks
// first); a short request whole; a queue bigger than a SYN read to its end,
// so that no skb is left partly read; EOF as EOF.
func TestFirstBytes(t *testing.T) {
	t.Run("server speaks first", func(t *testing.T) {
		client, leg := nettest.TCPPair(t)
		data, drained, err := firstBytes(leg, 20*time.Millisecond)
		if err != nil || len(data) != 0 || !drained {
			t.Fatalf("got %d bytes, drained %v, %v; want nothing, drained", len(data), drained, err)
		}
		// The deadline is gone: the relay's reads must not time out.
		client.Write([]byte("late"))
		leg.SetReadDeadline(time.Time{})
		buf := make([]byte, 4)
		if _, err := io.ReadFull(leg, buf); err != nil {
			t.Fatalf("read after firstBytes: %v", err)
		}
	})
	t.Run("short request", func(t *testing.T) {
		client, leg := nettest.TCPPair(t)
		req := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		client.Write(req)
		data, drained, err := firstBytes(leg, 5*time.Second)
		if err != nil || !bytes.Equal(data, req) || !drained {
			t.Fatalf("got %q, drained %v, %v; want the request, drained", data, drained, err)
		}
	})
	t.Run("more than a SYN holds", func(t *testing.T) {
		client, leg := nettest.TCPPair(t)
		msg := nettest.RandomBytes(48<<10+1, 21)
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		queued(t, leg, len(msg))
		data, drained, err := firstBytes(leg, 5*time.Second)
		if err != nil || !drained {
			t.Fatalf("drained %v, %v", drained, err)
		}
		// Everything queued was read (the rest is what comes later),
		// nothing lost or doubled.
		if !bytes.Equal(data, msg) {
			t.Fatalf("read %d of %d queued bytes", len(data), len(msg))
		}
		rest := []byte("after")
		client.Write(rest)
		client.CloseWrite()
		got, err := io.ReadAll(leg)
		if err != nil || !bytes.Equal(got, rest) {
			t.Fatalf("then read %q, %v; want %q", got, err, rest)
		}
	})
	t.Run("exactly a SYN's worth", func(t *testing.T) {
		// A full first read is not the end: the next read finds nothing
		// queued, which is when every skb is known read whole.
		client, leg := nettest.TCPPair(t)
		msg := nettest.RandomBytes(1400, 22)
		client.Write(msg)
		queued(t, leg, len(msg))
		data, drained, err := firstBytes(leg, 5*time.Second)
		if err != nil || !drained || !bytes.Equal(data, msg) {
			t.Fatalf("got %d bytes, drained %v, %v", len(data), drained, err)
		}
	})
	t.Run("wait over after the first read", func(t *testing.T) {
		// On a slow machine the wait can run out between the first read
		// and the next: what is queued must still be read, not the client
		// reset (a read past its deadline fails without trying).
		client, leg := nettest.TCPPair(t)
		msg := nettest.RandomBytes(48<<10+1, 23)
		client.Write(msg)
		queued(t, leg, len(msg))
		leg.SetReadDeadline(time.Now().Add(-time.Second))
		data, drained, err := ReadQueued(leg, nil, 1<<20)
		if err != nil || !drained || !bytes.Equal(data, msg) {
			t.Fatalf("got %d of %d bytes, drained %v, %v", len(data), len(msg), drained, err)
		}
	})
	t.Run("EOF", func(t *testing.T) {
		client, leg := nettest.TCPPair(t)
		client.CloseWrite()
		data, _, err := firstBytes(leg, 5*time.Second)
		if !errors.Is(err, io.EOF) || len(data) != 0 {
			t.Fatalf("got %d bytes, %v; want EOF", len(data), err)
		}
	})
}
