// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestOffloadHandsOver: with --relay sockmap a connection is relayed by
// splice until it has moved --offload-after bytes, then both its sockets go
// into the kernel relay, which moves what comes after; a connection that
// stays under the threshold never enters the maps. Byte-exact through the
// hand-over, both ways (an echo server).
func TestOffloadHandsOver(t *testing.T) {
	requireKernelRelay(t)
	b := newBed(t, defaultSuite())
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
	b.startPepsal("--iface", testbed.RouterClientIf, "--relay", "sockmap", "--offload-after", "64KiB")

	short := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
	short.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := readLine(short); err != nil {
		t.Fatal(err)
	}
	long := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
	long.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := readLine(long); err != nil {
		t.Fatal(err)
	}
	// 1 MB echoed in 16 KiB pieces: the hand-over comes at 64 KiB, with
	// bytes in flight both ways.
	msg := make([]byte, 1<<20)
	for i := range msg {
		msg[i] = byte(i*7 + i>>10)
	}
	go func() {
		for off := 0; off < len(msg); off += 16 << 10 {
			if _, err := long.Write(msg[off : off+16<<10]); err != nil {
				return
			}
		}
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(long, got); err != nil {
		t.Fatalf("echo through the hand-over: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo through the hand-over: bytes differ")
	}
	// The hand-over stops splice between two of its steps, and a step can
	// move what is queued, all of it on a busy machine: the kernel may
	// have moved none of the bytes above. Once it holds the connection,
	// whatever comes next goes through it.
	waitFor(t, 10*time.Second, "the long connection handed over", func() bool {
		for _, c := range b.conns() {
			if c.BytesToServer >= int64(len(msg)) {
				return c.Relay == "kernel"
			}
		}
		return false
	})
	after := bytes.Repeat([]byte("after the hand-over "), 10<<10)
	if _, err := long.Write(after); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(after))
	if _, err := io.ReadFull(long, got); err != nil || !bytes.Equal(got, after) {
		t.Fatalf("echo after the hand-over: %v, bytes equal %v", err, bytes.Equal(got, after))
	}
	if _, err := short.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(short); err != nil || line != "ping" {
		t.Fatalf("short connection: %q %v", line, err)
	}

	conns := b.conns()
	if len(conns) != 2 {
		t.Fatalf("conns --json: %+v", conns)
	}
	for _, c := range conns {
		switch {
		case c.BytesToServer > 64<<10:
			// How much of the first 1 MB the kernel moved depends on
			// timing; that it moved the bytes after does not.
			if c.Relay != "kernel" || c.KernelBytesToServer+c.KernelBytesToClient == 0 {
				t.Errorf("long connection: relay %q, kernel bytes %d/%d of %d/%d: want it handed over to the kernel",
					c.Relay, c.KernelBytesToServer, c.KernelBytesToClient, c.BytesToServer, c.BytesToClient)
			}
			if want := int64(len(msg) + len(after)); c.BytesToServer != want {
				t.Errorf("long connection: %d bytes to the server, want %d", c.BytesToServer, want)
			}
		default:
			if c.Relay != "splice until offload" || c.KernelBytesToServer+c.KernelBytesToClient != 0 {
				t.Errorf("short connection: relay %q, kernel bytes %d/%d: want splice, nothing in the kernel",
					c.Relay, c.KernelBytesToServer, c.KernelBytesToClient)
			}
		}
	}
	r := b.status().Relay
	if r.Sockets != 2 {
		t.Errorf("%d sockets in pepsal_relay, want the long connection's 2", r.Sockets)
	}
}
