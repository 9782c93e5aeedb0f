// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeGateway hands out loopback connections whose far ends it holds, or
// fails while down.
type fakeGateway struct {
	t     *testing.T
	ln    *net.TCPListener
	down  atomic.Bool
	dials atomic.Int64
	mu    sync.Mutex
	far   []net.Conn
}

func newFakeGateway(t *testing.T) *fakeGateway {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{t: t, ln: ln}
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		for _, c := range g.far {
			c.Close()
		}
		g.mu.Unlock()
	})
	return g
}

func (g *fakeGateway) dial(ctx context.Context) (*net.TCPConn, hello, error) {
	g.dials.Add(1)
	if g.down.Load() {
		return nil, hello{}, errors.New("connection refused (fake)")
	}
	c, err := net.DialTCP("tcp", nil, g.ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, hello{}, err
	}
	far, err := g.ln.Accept()
	if err != nil {
		c.Close()
		return nil, hello{}, err
	}
	g.mu.Lock()
	g.far = append(g.far, far)
	g.mu.Unlock()
	h, err := newHello()
	return c, h, err
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startPool(t *testing.T, g *fakeGateway, size int) *Pool {
	p := newPool(size, testKey, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.dial = g.dial
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func TestPeerPoolFillsTakesAndRefills(t *testing.T) {
	g := newFakeGateway(t)
	p := startPool(t, g, 4)
	eventually(t, "pool full", func() bool { return p.Stats().Idle == 4 })
	var taken []*warmConn
	for range 4 {
		w := p.take()
		if w == nil {
			t.Fatal("take from a full pool returned nothing")
		}
		taken = append(taken, w)
	}
	// A burst larger than the pool: the fifth falls back (unless a refill
	// already landed, which is also right).
	if w := p.take(); w != nil {
		taken = append(taken, w)
	}
	eventually(t, "pool refilled behind the takers", func() bool { return p.Stats().Idle == 4 })
	for _, w := range taken {
		w.conn.Close()
		p.done()
	}
	s := p.Stats()
	if s.InUse != 0 || s.Taken != uint64(len(taken)) || s.Taken+s.FallbackEmpty != 5 || s.FallbackDown != 0 {
		t.Errorf("stats after a burst of 5 over a pool of 4: %+v", s)
	}
}

func TestPeerPoolDropsConnectionsTheGatewayClosed(t *testing.T) {
	g := newFakeGateway(t)
	p := startPool(t, g, 2)
	eventually(t, "pool full", func() bool { return p.Stats().Idle == 2 })
	g.down.Store(true) // no refill meanwhile
	g.mu.Lock()
	for _, c := range g.far {
		c.Close() // the gateway restarted: FIN on every idle connection
	}
	g.mu.Unlock()
	time.Sleep(50 * time.Millisecond) // the FINs cross loopback
	if w := p.take(); w != nil {
		t.Fatal("took a connection the gateway had closed")
	}
	if s := p.Stats(); s.Dead != 2 {
		t.Errorf("dead = %d, want 2", s.Dead)
	}
}

func TestPeerPoolBacksOffAndRecovers(t *testing.T) {
	g := newFakeGateway(t)
	g.down.Store(true)
	p := startPool(t, g, 8)
	// The first round dials all 8 at once; then single probes.
	eventually(t, "two failed probes after the first round", func() bool { return p.Stats().DialFailures >= 8+2 })
	s := p.Stats()
	// One probe at a time while failing, each after a growing pause:
	// not a dial storm of 8 at a time.
	if d := uint64(g.dials.Load()); d > s.DialFailures+1 {
		t.Errorf("%d dials for %d failures: the pool does not probe one at a time", d, s.DialFailures)
	}
	if s.BackoffMS < backoffMin.Milliseconds()*2 || s.LastError == "" {
		t.Errorf("after %d failures: backoff %d ms, last error %q", s.DialFailures, s.BackoffMS, s.LastError)
	}
	if w := p.take(); w != nil {
		t.Fatal("took a connection from a pool whose gateway is down")
	}
	if s := p.Stats(); s.FallbackDown != 1 || s.FallbackEmpty != 0 {
		t.Errorf("fallback while down counted as %+v", s)
	}
	g.down.Store(false)
	eventually(t, "pool refilled after the gateway came back", func() bool { return p.Stats().Idle == 8 })
	if s := p.Stats(); s.BackoffMS != 0 || s.LastError != "" {
		t.Errorf("recovered pool still backing off: %+v", s)
	}
}

func TestPeerPoolRecyclesOldConnections(t *testing.T) {
	g := newFakeGateway(t)
	p := newPool(3, testKey, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.dial = g.dial
	p.maxAge = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	eventually(t, "connections recycled and replaced", func() bool {
		s := p.Stats()
		return s.Recycled >= 3 && s.Idle == 3
	})
	cancel()
	<-done
	if s := p.Stats(); s.Idle != 0 {
		t.Errorf("%d idle connections left after Run ended", s.Idle)
	}
}
