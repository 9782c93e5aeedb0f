// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// kernelBed is a client, a server and the kernel relay between them, on a
// fake map. The relay starts only with start, so that a test can set the
// fake up with the legs' cookies first.
type kernelBed struct {
	client, server       *net.TCPConn // the outside ends
	clientLeg, serverLeg *net.TCPConn // the relay's
	clientCookie         uint64       // up direction's key
	serverCookie         uint64       // down direction's key
	maps                 *fakeRelay
	conn                 *conn.Conn
	outcome              chan conn.Outcome
	cancel               context.CancelFunc
	// forgotAtDone: the maps were cleaned before the relay reported its end.
	forgotAtDone bool
}

func newKernelBed(t *testing.T) *kernelBed {
	t.Helper()
	b := &kernelBed{outcome: make(chan conn.Outcome, 1), maps: newFakeRelay()}
	b.client, b.clientLeg = nettest.TCPPair(t)
	b.serverLeg, b.server = nettest.TCPPair(t)
	for _, c := range []*net.TCPConn{b.clientLeg, b.serverLeg} {
		if err := sockopt.ResetOnCrash(c); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if b.clientCookie, err = sockopt.Cookie(b.clientLeg); err != nil {
		t.Fatal(err)
	}
	if b.serverCookie, err = sockopt.Cookie(b.serverLeg); err != nil {
		t.Fatal(err)
	}
	b.conn = conn.New(0, netip.AddrPort{}, netip.AddrPort{}, conn.Kernel)
	for _, c := range []*net.TCPConn{b.client, b.server} {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	return b
}

func (b *kernelBed) start(t *testing.T, st Setup) {
	t.Helper()
	k := &Kernel{Log: slog.New(slog.DiscardHandler), Maps: b.maps, Budget: 4 << 20, Splice: testSplice(t)}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	t.Cleanup(cancel)
	// As split does: whoever cancels resets both legs.
	context.AfterFunc(ctx, func() { sockopt.Reset(b.clientLeg); sockopt.Reset(b.serverLeg) })
	k.Start(ctx, b.conn, b.clientLeg, b.serverLeg, st, func(o conn.Outcome) {
		select {
		case <-b.maps.forgot:
			b.forgotAtDone = true
		default:
		}
		b.outcome <- o
	})
}

func (b *kernelBed) wait(t *testing.T) conn.Outcome {
	t.Helper()
	select {
	case o := <-b.outcome:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end")
		return 0
	}
}

// checkEnd: the relay's state is deleted once, before the relay reports its
// end, and nothing touches the maps after that.
func (b *kernelBed) checkEnd(t *testing.T) {
	t.Helper()
	if !b.forgotAtDone {
		t.Errorf("the relay ended before it deleted its state; calls: %v", b.maps.callLog())
	}
	b.maps.mu.Lock()
	defer b.maps.mu.Unlock()
	if len(b.maps.after) > 0 {
		t.Errorf("maps used after Forget: %v", b.maps.after)
	}
	if len(b.maps.dirs) != 0 {
		t.Errorf("state left in the maps: %v", b.maps.dirs)
	}
}

func index(calls []string, prefix string) int {
	return slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

// The setup order: both directions' state before either socket enters the
// map (the verdict must never meet a socket it does not know), the client
// before the server; the bytes userspace already moved (fast open) count as
// written and passed; each direction's sequence base is what is not data
// (the dialed leg's SYN); every byte arrives and half-closes pass through.
func TestKernelRelayOrderAndBooks(t *testing.T) {
	b := newKernelBed(t)
	const pre = 5
	// Fast open's first bytes: read from the client leg and written to the
	// server leg before the relay.
	first := []byte("first")
	if _, err := b.client.Write(first); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b.clientLeg, make([]byte, pre)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.serverLeg.Write(first); err != nil {
		t.Fatal(err)
	}
	b.start(t, Setup{Pre: pre})

	up, down := nettest.RandomBytes(300<<10+3, 11), nettest.RandomBytes(200<<10+7, 12)
	serverGot := make(chan []byte, 1)
	go func() {
		got, _ := io.ReadAll(b.server)
		serverGot <- got
		b.server.Write(down)
		b.server.CloseWrite()
	}()
	if _, err := b.client.Write(up); err != nil {
		t.Fatal(err)
	}
	b.client.CloseWrite()
	if got := <-serverGot; !bytes.Equal(got, append(first, up...)) {
		t.Fatalf("server got %d bytes, want %d intact", len(got), pre+len(up))
	}
	got, err := io.ReadAll(b.client)
	if err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client got %d bytes (%v), want %d intact", len(got), err, len(down))
	}
	if o := b.wait(t); o != conn.Completed {
		t.Fatalf("outcome %v, want Completed", o)
	}

	calls := b.maps.callLog()
	prep := index(calls, "prepare")
	insC := index(calls, fmt.Sprintf("insert %d", b.clientCookie))
	insS := index(calls, fmt.Sprintf("insert %d", b.serverCookie))
	fgt := index(calls, "forget")
	if prep < 0 || insC < 0 || insS < 0 || fgt < 0 || !(prep < insC && insC < insS && insS < fgt) {
		t.Fatalf("calls %v: want prepare, insert client, insert server, forget", calls)
	}
	if calls[prep] != fmt.Sprintf("prepare %d %d", b.clientCookie, b.serverCookie) {
		t.Errorf("%s: want the client's cookie first", calls[prep])
	}
	b.checkEnd(t)
	if r := b.conn.Relay().String(); r != "kernel" {
		t.Errorf("relay %q, want kernel", r)
	}
	// pre bytes were written by userspace before the relay: counted with
	// the relayed ones.
	if m := b.conn.Moved(); m.ToServer != int64(len(up))+pre || m.ToClient != int64(len(down)) {
		t.Errorf("moved %+v, want %d up (with %d pre) and %d down", m, len(up)+pre, pre, len(down))
	}
}

// The prepared state as Prepare receives it.
func TestKernelRelayPrepareArgs(t *testing.T) {
	b := newKernelBed(t)
	var got [2]loader.RelaySide
	rec := &recordingPrepare{fakeRelay: b.maps, got: &got}
	k := &Kernel{Log: slog.New(slog.DiscardHandler), Maps: rec, Budget: 1 << 20, Splice: testSplice(t)}
	if _, err := b.serverLeg.Write([]byte("123456789")); err != nil {
		t.Fatal(err)
	}
	done := make(chan conn.Outcome, 1)
	k.Start(context.Background(), b.conn, b.clientLeg, b.serverLeg, Setup{Pre: 9}, func(o conn.Outcome) { done <- o })
	// The accepted leg's sequence space starts with data, the dialed
	// leg's with its SYN; 9 bytes written to the server leg before the
	// relay are data, not base.
	want := [2]loader.RelaySide{{Cookie: b.clientCookie, Pre: 9, SeqBase: 0}, {Cookie: b.serverCookie, SeqBase: 1}}
	if got != want {
		t.Errorf("Prepare(%+v), want %+v", got, want)
	}
	b.client.Close()
	b.server.Close()
	<-done
}

type recordingPrepare struct {
	*fakeRelay
	got *[2]loader.RelaySide
}

func (r *recordingPrepare) Prepare(a, b loader.RelaySide, budget uint64) error {
	*r.got = [2]loader.RelaySide{a, b}
	return r.fakeRelay.Prepare(a, b, budget)
}

// At EOF the relay half-closes the other leg only once the verdict has seen
// every byte TCP received (kernel_bytes + passed_bytes >= received): the
// FIN can overtake bytes still on their way through the verdict.
func TestKernelRelayEOFWaitsForTheVerdict(t *testing.T) {
	b := newKernelBed(t)
	b.start(t, Setup{})
	msg := nettest.RandomBytes(10<<10, 13)
	if _, err := b.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b.server, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	// The verdict is behind by 100 bytes: the client's FIN must wait.
	b.maps.set(b.clientCookie, func(d *fakeDir) { d.holdBack = 100 })
	before := b.maps.dirReads(b.clientCookie)
	b.client.CloseWrite()
	// Polled 20 more times with the verdict behind, the server leg
	// must still be open (a shutdown changes its state at once).
	nettest.WaitFor(t, "the relay did not poll the verdict at EOF, nor half-close", func() bool {
		return b.maps.dirReads(b.clientCookie) >= before+20 || sockopt.TCPState(b.serverLeg) != unix.BPF_TCP_ESTABLISHED
	})
	if st := sockopt.TCPState(b.serverLeg); st != unix.BPF_TCP_ESTABLISHED {
		t.Fatalf("server leg half-closed (state %d) while 100 received bytes had not reached the verdict", st)
	}
	b.maps.set(b.clientCookie, func(d *fakeDir) { d.holdBack = 0 })
	if n, err := io.Copy(io.Discard, b.server); err != nil || n != 0 {
		t.Fatalf("server: %d more bytes, %v; want EOF", n, err)
	}
	b.server.Close()
	if o := b.wait(t); o != conn.Completed {
		t.Fatalf("outcome %v, want Completed", o)
	}
	b.checkEnd(t)
}

// An EOF whose books hold one byte more than TCP's received data minus the
// FIN had no FIN: a psock can read a reset as EOF (the kernel's own send of
// redirected bytes on the socket takes the error first). The other side
// must see the reset, never a clean end of a cut-off stream.
func TestKernelRelayEOFWithoutFINResets(t *testing.T) {
	b := newKernelBed(t)
	b.start(t, Setup{})
	msg := nettest.RandomBytes(10<<10, 14)
	if _, err := b.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b.server, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	// The verdict saw one byte more than the data before a FIN would be.
	b.maps.set(b.clientCookie, func(d *fakeDir) { d.dir.KernelBytes = 1 })
	b.client.CloseWrite()
	if _, err := io.Copy(io.Discard, b.server); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read %v, want a reset", err)
	}
	if o := b.wait(t); o != conn.WasReset {
		t.Fatalf("outcome %v, want WasReset", o)
	}
	b.checkEnd(t)
}

// Bytes the kernel redirected toward a socket must all be in its send queue
// before userspace writes behind them or shuts it down (closing earlier
// would drop the psock's backlog: a silent truncation; writing earlier
// would reorder).
func TestKernelRelayFlushesKernelBytesFirst(t *testing.T) {
	b := newKernelBed(t)
	kernel := bytes.Repeat([]byte("K"), 4096) // what the verdict redirected
	// The client sent them, and the verdict took them off the client leg.
	if _, err := b.client.Write(kernel); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b.clientLeg, make([]byte, len(kernel))); err != nil {
		t.Fatal(err)
	}
	b.start(t, Setup{})
	tail := []byte("tail from userspace")
	b.maps.set(b.clientCookie, func(d *fakeDir) { d.dir.KernelBytes = uint64(len(kernel)) })
	before := b.maps.dirReads(b.clientCookie)
	if _, err := b.client.Write(tail); err != nil {
		t.Fatal(err)
	}
	b.client.CloseWrite()
	nettest.WaitFor(t, "the relay never read the relay state", func() bool { return b.maps.dirReads(b.clientCookie) > before })
	// A relay that does not wait writes the tail, or shuts down, now.
	time.Sleep(100 * time.Millisecond)
	if st := sockopt.TCPState(b.serverLeg); st != unix.BPF_TCP_ESTABLISHED {
		t.Fatalf("server leg shut down (state %d) before the kernel's bytes were in its queue", st)
	}
	// The kernel's redirect lands in the server leg's send queue.
	if _, err := b.serverLeg.Write(kernel); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b.server)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte{}, kernel...), tail...); !bytes.Equal(got, want) {
		t.Fatalf("server got %q..., want the kernel's %d bytes, then %q", got[:min(len(got), 32)], len(kernel), tail)
	}
	b.server.Close()
	if o := b.wait(t); o != conn.Completed {
		t.Fatalf("outcome %v, want Completed", o)
	}
	// The final counts are read from the map before its state is deleted.
	if m := b.conn.Moved(); m.KernelToServer != int64(len(kernel)) || m.ToServer != int64(len(kernel)+len(tail)) {
		t.Errorf("moved %+v, want %d by the kernel of %d to the server", m, len(kernel), len(kernel)+len(tail))
	}
	b.checkEnd(t)
}

// A full map: the connection is relayed in userspace, intact, and the
// prepared state is deleted when it ends (client not inserted), or the
// client stays in the map for good and only the server leg goes without
// (removing the client would drop what the verdict left on it).
func TestKernelRelayFullMapFallsBack(t *testing.T) {
	full := fmt.Errorf("insert into pepsal_relay: %w", unix.ENOSPC)
	for _, c := range []struct {
		name    string
		setup   func(b *kernelBed)
		relay   string
		inserts int
	}{
		{"prepare", func(b *kernelBed) { b.maps.failPrep = fmt.Errorf("relay state in pepsal_relaydir: %w", unix.E2BIG) }, "userspace: relay state", 0},
		{"client", func(b *kernelBed) { b.maps.failIns[b.clientCookie] = full }, "userspace: client: ", 1},
		{"server", func(b *kernelBed) { b.maps.failIns[b.serverCookie] = full }, "userspace: server: ", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newKernelBed(t)
			c.setup(b)
			b.start(t, Setup{})
			up, down := nettest.RandomBytes(100<<10, 14), nettest.RandomBytes(70<<10, 15)
			go func() { b.client.Write(up); b.client.CloseWrite() }()
			got, err := io.ReadAll(b.server)
			if err != nil || !bytes.Equal(got, up) {
				t.Fatalf("server got %d of %d bytes: %v", len(got), len(up), err)
			}
			go func() { b.server.Write(down); b.server.CloseWrite() }()
			if got, err = io.ReadAll(b.client); err != nil || !bytes.Equal(got, down) {
				t.Fatalf("client got %d of %d bytes: %v", len(got), len(down), err)
			}
			if o := b.wait(t); o != conn.Completed {
				t.Fatalf("outcome %v, want Completed", o)
			}
			if r := b.conn.Relay().String(); !strings.HasPrefix(r, c.relay) {
				t.Errorf("relay %q, want %q...", r, c.relay)
			}
			calls := b.maps.callLog()
			ins := 0
			for _, call := range calls {
				if strings.HasPrefix(call, "insert") {
					ins++
				}
			}
			if ins != c.inserts {
				t.Errorf("%d inserts, want %d: %v", ins, c.inserts, calls)
			}
			if c.name != "prepare" { // a failed Prepare cleans up itself
				b.checkEnd(t)
			}
			// The client, inserted, stays in the map: its direction keeps
			// following the verdict's books to the end.
			if reads := b.maps.dirReads(b.clientCookie); (c.name == "server") != (reads > 0) {
				t.Errorf("%d reads of the client direction's state", reads)
			}
			if m := b.conn.Moved(); m.ToServer != int64(len(up)) || m.ToClient != int64(len(down)) {
				t.Errorf("moved %+v, want %d up and %d down", m, len(up), len(down))
			}
		})
	}
}

// A reset on one side resets the other; cancelling (drain timeout) resets
// both; either way the state is deleted.
func TestKernelRelayResetAndAbort(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		b := newKernelBed(t)
		b.start(t, Setup{})
		go b.server.Write(nettest.RandomBytes(4<<20, 16))
		if _, err := io.ReadFull(b.client, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		b.server.SetLinger(0)
		b.server.Close()
		if _, err := io.Copy(io.Discard, b.client); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client saw %v after the server's reset, want ECONNRESET", err)
		}
		if o := b.wait(t); o != conn.WasReset {
			t.Fatalf("outcome %v, want WasReset", o)
		}
		b.checkEnd(t)
	})
	t.Run("abort", func(t *testing.T) {
		b := newKernelBed(t)
		b.start(t, Setup{})
		if _, err := b.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(b.server, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		b.cancel()
		for _, c := range []*net.TCPConn{b.client, b.server} {
			if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("%v after the abort, want ECONNRESET", err)
			}
		}
		if o := b.wait(t); o != conn.WasReset {
			t.Fatalf("outcome %v, want WasReset", o)
		}
		b.checkEnd(t)
	})
}
