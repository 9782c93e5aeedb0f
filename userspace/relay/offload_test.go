// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
)

// TestSpliceOffloadHandsOverBetweenSteps: the splice relay hands a
// connection over once it has moved offloadAfter bytes, with both directions
// stopped between steps (every byte read was written: what each moved is
// what the peer got), and the next relay, given the registrations, carries
// on byte-exact both ways, through the half-close. Here the next relay is
// another splice relay: the kernel's stand-in.
func TestSpliceOffloadHandsOverBetweenSteps(t *testing.T) {
	w, err := NewIdleWaiter(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	client, clientLeg, serverLeg, server, record := offloadBed(t)
	outcome := make(chan conn.Outcome, 1)
	var handovers atomic.Int32
	var movedUp, movedDown atomic.Int64
	done := func(o conn.Outcome) { outcome <- o }
	sp := Splice{Pipes: &Pipes{}, Waiter: w}
	sp.relayWith(context.Background(), record, clientLeg, serverLeg, done, spliceOpts{
		offloadAfter: 64 << 10,
		offload: func(up, down int64, slots [2]idleSlot) {
			handovers.Add(1)
			movedUp.Store(up)
			movedDown.Store(down)
			if m := record.Moved(); m.ToServer != up || m.ToClient != down {
				t.Errorf("handed over after %d/%d bytes, the connection counted %d/%d", up, down, m.ToServer, m.ToClient)
			}
			sp.relayWith(context.Background(), record, clientLeg, serverLeg, done, spliceOpts{slots: slots})
		},
	})
	up, down := nettest.RandomBytes(1<<20, 1), nettest.RandomBytes(3<<20, 2)
	go func() {
		for off := 0; off < len(up); off += 8 << 10 {
			if _, err := client.Write(up[off : off+8<<10]); err != nil {
				return
			}
		}
		client.CloseWrite()
	}()
	go func() {
		server.Write(down)
		server.CloseWrite()
	}()
	gotDown, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(gotDown, down) {
		t.Fatalf("client read %d of %d bytes (%v), or they differ", len(gotDown), len(down), err)
	}
	gotUp, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(gotUp, up) {
		t.Fatalf("server read %d of %d bytes (%v), or they differ", len(gotUp), len(up), err)
	}
	select {
	case o := <-outcome:
		if o != conn.Completed {
			t.Errorf("outcome %v, want completed", o)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
	if n := handovers.Load(); n != 1 {
		t.Fatalf("%d hand-overs, want 1", n)
	}
	if movedUp.Load()+movedDown.Load() < 64<<10 {
		t.Errorf("handed over after %d bytes, want >= 64 KiB", movedUp.Load()+movedDown.Load())
	}
}

// TestSpliceOffloadCalledOffByEOF: a connection that ends under the
// threshold, or whose direction ends while the hand-over waits for the
// other, is never handed over and ends as usual.
func TestSpliceOffloadCalledOffByEOF(t *testing.T) {
	w, err := NewIdleWaiter(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	sp := Splice{Pipes: &Pipes{}, Waiter: w}
	for _, size := range []int{1000, 70 << 10} {
		client, clientLeg, serverLeg, server, record := offloadBed(t)
		outcome := make(chan conn.Outcome, 1)
		var handovers atomic.Int32
		offload := func(_, _ int64, slots [2]idleSlot) {
			handovers.Add(1)
			sp.relayWith(context.Background(), record, clientLeg, serverLeg, func(o conn.Outcome) { outcome <- o }, spliceOpts{slots: slots})
		}
		sp.relayWith(context.Background(), record, clientLeg, serverLeg, func(o conn.Outcome) { outcome <- o }, spliceOpts{offloadAfter: 64 << 10, offload: offload})
		// The server answers with size bytes and its FIN at once; the
		// client never writes: up stays parked while down ends.
		down := nettest.RandomBytes(size, 3)
		server.Write(down)
		server.CloseWrite()
		got := make([]byte, size)
		if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, down) {
			t.Fatalf("%d bytes: read %v, or they differ", size, err)
		}
		if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("%d bytes: after the answer %d bytes, %v; want EOF", size, n, err)
		}
		client.CloseWrite()
		if _, err := io.ReadAll(server); err != nil {
			t.Fatal(err)
		}
		select {
		case o := <-outcome:
			if o != conn.Completed {
				t.Errorf("%d bytes: outcome %v, want completed", size, o)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d bytes: relay did not end", size)
		}
		if size < 64<<10 && handovers.Load() != 0 {
			t.Errorf("%d bytes: handed over under the threshold", size)
		}
	}
}

// offloadBed is a client and a server, the relay's two legs between them,
// and the connection's row.
func offloadBed(t *testing.T) (client, clientLeg, serverLeg, server *net.TCPConn, record *conn.Conn) {
	t.Helper()
	client, clientLeg = nettest.TCPPair(t)
	serverLeg, server = nettest.TCPPair(t)
	for _, c := range []*net.TCPConn{client, server} {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	return client, clientLeg, serverLeg, server, conn.New(0, netip.AddrPort{}, netip.AddrPort{}, conn.Splice)
}
