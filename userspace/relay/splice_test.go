// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// relayBed is a client, a server and the splice relay between them, its
// legs armed with SO_LINGER 0 as split arms them.
type relayBed struct {
	client, server       *net.TCPConn // the outside ends
	clientLeg, serverLeg *net.TCPConn // the relay's
	conn                 *conn.Conn
	outcome              chan conn.Outcome
	pipes                *Pipes // the relay's
}

func newRelayBed(t *testing.T) *relayBed {
	t.Helper()
	b := &relayBed{outcome: make(chan conn.Outcome, 1), pipes: &Pipes{}}
	b.client, b.clientLeg = nettest.TCPPair(t)
	b.serverLeg, b.server = nettest.TCPPair(t)
	for _, c := range []*net.TCPConn{b.clientLeg, b.serverLeg} {
		if err := sockopt.ResetOnCrash(c); err != nil {
			t.Fatal(err)
		}
	}
	b.conn = conn.New(0, netip.AddrPort{}, netip.AddrPort{}, conn.Splice)
	// No idle waiter: each direction parks a goroutine.
	Splice{Pipes: b.pipes}.Start(context.Background(), b.conn, b.clientLeg, b.serverLeg, Setup{}, func(o conn.Outcome) { b.outcome <- o })
	for _, c := range []*net.TCPConn{b.client, b.server} {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	return b
}

func (b *relayBed) wait(t *testing.T) conn.Outcome {
	t.Helper()
	select {
	case o := <-b.outcome:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end")
		return 0
	}
}

func lentPipes(pipes *Pipes) int64 {
	pipes.mu.Lock()
	defer pipes.mu.Unlock()
	return pipes.open.Load() - int64(len(pipes.idle))
}

// Half-close both ways, every byte intact and counted, and the last bytes
// still delivered when the relay has closed its legs before the client read
// them (the legs ran with SO_LINGER 0: a close without clearing it would
// drop them and send an RST).
func TestSpliceRelayHalfCloseAndGracefulClose(t *testing.T) {
	b := newRelayBed(t)
	// Room for the whole download in the client leg's send queue, so that
	// the relay can finish while the client reads nothing. SO_SNDBUF is
	// capped by net.core.wmem_max (Debian's default: 208 KiB), which only
	// root may pass: the download is sized to what the queue really holds.
	var sndbuf int
	err := sockopt.WithFD(b.clientLeg, func(fd int) error {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20); err != nil {
				return err
			}
		}
		var err error
		sndbuf, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	up, down := nettest.RandomBytes(3<<20+17, 1), nettest.RandomBytes(min(1<<20+5, sndbuf/8+5), 2)

	serverGot := make(chan []byte, 1)
	go func() {
		got, _ := io.ReadAll(b.server) // until the client's half-close arrives
		serverGot <- got
		b.server.Write(down)
		b.server.Close()
	}()
	if _, err := b.client.Write(up); err != nil {
		t.Fatal(err)
	}
	if err := b.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := <-serverGot; !bytes.Equal(got, up) {
		t.Fatalf("server got %d bytes, want %d intact", len(got), len(up))
	}
	if o := b.wait(t); o != conn.Completed {
		t.Fatalf("outcome %v, want Completed", o)
	}
	got, err := io.ReadAll(b.client)
	if err != nil {
		t.Fatalf("client read after the relay closed: %v (after %d bytes)", err, len(got))
	}
	if !bytes.Equal(got, down) {
		t.Fatalf("client got %d bytes, want %d intact", len(got), len(down))
	}
	if m := b.conn.Moved(); m.ToServer != int64(len(up)) || m.ToClient != int64(len(down)) {
		t.Fatalf("counted %+v, want %d up and %d down", m, len(up), len(down))
	}
}

// The upload keeps flowing after the server's half-close.
func TestSpliceRelayOtherDirectionFlowsAfterHalfClose(t *testing.T) {
	b := newRelayBed(t)
	if _, err := b.server.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	b.server.CloseWrite()
	got, err := io.ReadAll(b.client)
	if err != nil || string(got) != "hello" {
		t.Fatalf("client got %q, %v", got, err)
	}
	up := nettest.RandomBytes(2<<20, 3)
	go func() { b.client.Write(up); b.client.CloseWrite() }()
	h := sha256.New()
	if n, err := io.Copy(h, b.server); err != nil || n != int64(len(up)) {
		t.Fatalf("server got %d of %d bytes after its half-close: %v", n, len(up), err)
	}
	if !bytes.Equal(h.Sum(nil), sum(up)) {
		t.Fatal("upload corrupted")
	}
	b.server.Close()
	if o := b.wait(t); o != conn.Completed {
		t.Fatalf("outcome %v, want Completed", o)
	}
}

func sum(p []byte) []byte { h := sha256.Sum256(p); return h[:] }

// A reset on one side becomes a reset on the other, mid-stream.
func TestSpliceRelayResetPropagates(t *testing.T) {
	b := newRelayBed(t)
	go b.server.Write(nettest.RandomBytes(8<<20, 4)) // more than the buffers hold
	if _, err := io.ReadFull(b.client, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	b.server.SetLinger(0)
	b.server.Close()
	_, err := io.Copy(io.Discard, b.client)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client saw %v after the server's reset, want ECONNRESET", err)
	}
	if o := b.wait(t); o != conn.WasReset {
		t.Fatalf("outcome %v, want WasReset", o)
	}
}

// An idle connection holds no pipe, and pipes do not outlive their use.
func TestSpliceRelayIdleHoldsNoPipe(t *testing.T) {
	b := newRelayBed(t)
	msg := nettest.RandomBytes(256<<10, 5)
	for _, dir := range []struct{ from, to *net.TCPConn }{{b.client, b.server}, {b.server, b.client}} {
		go dir.from.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(dir.to, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("relayed %v", err)
		}
	}
	nettest.WaitFor(t, "an idle connection still holds a pipe", func() bool { return lentPipes(b.pipes) == 0 })
	nettest.WaitFor(t, "idle pipes still open", func() bool { return b.pipes.open.Load() == 0 })
	b.client.Close()
	b.server.Close()
	b.wait(t)
}

// A pipe that comes back with bytes in it is closed, never lent again.
func TestPipePoolNeverLendsBytes(t *testing.T) {
	pipes := &Pipes{}
	p, err := pipes.get()
	if err != nil {
		t.Fatal(err)
	}
	if p.size < 64<<10 {
		t.Errorf("pipe of %d bytes", p.size)
	}
	n, err := unix.Write(p.w, []byte("left over"))
	if err != nil {
		t.Fatal(err)
	}
	p.data = n
	pipes.put(p)
	if _, err := unix.FcntlInt(uintptr(p.r), unix.F_GETPIPE_SZ, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("a pipe with bytes went back to the pool (fcntl: %v)", err)
	}
	q, err := pipes.get()
	if err != nil {
		t.Fatal(err)
	}
	defer pipes.put(q)
	if n, err := unix.Read(q.r, make([]byte, 16)); n > 0 || err != unix.EAGAIN {
		t.Fatalf("lent pipe holds bytes: %d, %v", n, err)
	}
}

// A reset that arrives while the relay waits on an idle socket is a reset on
// the other side too, never a clean FIN (the readiness check must not
// consume the socket's pending error).
func TestSpliceRelayResetOfIdleLegIsNotAFIN(t *testing.T) {
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			b := newRelayBed(t)
			resetter, other := b.server, b.client
			if side == "client" {
				resetter, other = b.client, b.server
			}
			// One exchange, so that both directions are idle and waiting.
			if _, err := other.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resetter, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			resetter.SetLinger(0)
			resetter.Close()
			_, err := io.Copy(io.Discard, other)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("%s reset an idle connection: the other side saw %v, want ECONNRESET", side, err)
			}
			if o := b.wait(t); o != conn.WasReset {
				t.Fatalf("outcome %v, want WasReset", o)
			}
		})
	}
}

// The splice relay run as the pipeline runs it (idle waiter, a context the
// drain timeout cancels): cancelling resets both sides and ends the relay as
// reset, even with both directions idle and parked in the waiter.
func TestSpliceRelayAbortResetsBoth(t *testing.T) {
	client, clientLeg := nettest.TCPPair(t)
	serverLeg, server := nettest.TCPPair(t)
	for _, c := range []*net.TCPConn{clientLeg, serverLeg} {
		if err := sockopt.ResetOnCrash(c); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	w, err := NewIdleWaiter(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	record := conn.New(0, clientLeg.RemoteAddr().(*net.TCPAddr).AddrPort(), serverLeg.RemoteAddr().(*net.TCPAddr).AddrPort(), conn.Splice)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	context.AfterFunc(ctx, func() { sockopt.Reset(clientLeg); sockopt.Reset(serverLeg) })
	outcome := make(chan conn.Outcome, 1)
	Splice{Pipes: &Pipes{}, Waiter: w}.Start(ctx, record, clientLeg, serverLeg, Setup{}, func(o conn.Outcome) { outcome <- o })

	// One byte each way: both directions then wait, idle.
	for _, d := range []struct{ from, to *net.TCPConn }{{client, server}, {server, client}} {
		d.from.Write([]byte("x"))
		if _, err := io.ReadFull(d.to, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	for _, c := range []*net.TCPConn{client, server} {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s saw %v after the abort, want ECONNRESET", c.LocalAddr(), err)
		}
	}
	select {
	case o := <-outcome:
		if o != conn.WasReset {
			t.Fatalf("outcome %v, want WasReset", o)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end after the abort")
	}
	if m := record.Moved(); m.ToServer != 1 || m.ToClient != 1 {
		t.Errorf("moved %+v, want 1 each way", m)
	}
}
