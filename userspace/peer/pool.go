// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// DefaultPool is --peer-pool's default: a browser opening a page starts
// about 6 connections per host and 15-20 in all in its first round trip;
// 16 warm connections cover such a burst (the rest falls back to fast
// open, one round trip slower, while the pool refills behind them), and cost
// the gateway 16 idle sockets per terminal.
const DefaultPool = 16

// Backoff of the pool while the gateway is unreachable or refuses.
const (
	backoffMin = 500 * time.Millisecond
	backoffMax = 30 * time.Second
)

// warmConn is an idle connection to the gateway, hello received.
type warmConn struct {
	conn    *net.TCPConn
	hello   hello
	expires time.Time
}

// Pool keeps idle, tuned, authenticated-ready connections open from a
// terminal to its gateway, one per future client flow.
type Pool struct {
	Size    int
	Key     []byte
	gateway string
	// dial opens one connection to the gateway and returns it with the
	// gateway's hello; replaced in tests.
	dial   func(ctx context.Context) (*net.TCPConn, hello, error)
	maxAge time.Duration
	log    *slog.Logger

	mu       sync.Mutex
	idle     []*warmConn // oldest first
	dialing  int
	inUse    int
	backoff  time.Duration // 0: the last dial succeeded
	retryAt  time.Time
	lastErr  error
	wake     chan struct{}
	failLog  logx.RateLog
	counters struct {
		refills, dialFailures, taken, recycled, dead atomic.Uint64
		fallbackEmpty, fallbackDown                  atomic.Uint64
	}
}

// NewPool prepares a pool of size connections to gateway, dialed by d
// with the terminal's long leg (the server leg) tuning. Run fills it.
func NewPool(gateway string, size int, key []byte, d *proxy.Dialer, log *slog.Logger) *Pool {
	p := newPool(size, key, log)
	p.dial = func(ctx context.Context) (*net.TCPConn, hello, error) { return dialGateway(ctx, d, gateway) }
	p.gateway = gateway
	return p
}

func newPool(size int, key []byte, log *slog.Logger) *Pool {
	return &Pool{Size: size, Key: key, maxAge: MaxAge, log: log, wake: make(chan struct{}, 1),
		failLog: logx.RateLog{Period: 30 * time.Second}}
}

// Run keeps the pool full until ctx is done, then closes the idle connections.
func (p *Pool) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		p.mu.Lock()
		idle := p.idle
		p.idle = nil
		p.mu.Unlock()
		for _, w := range idle {
			w.conn.Close()
		}
	}()
	for {
		now := time.Now()
		next := now.Add(time.Minute)
		p.mu.Lock()
		p.expireLocked(now)
		if len(p.idle) > 0 && p.idle[0].expires.Before(next) {
			next = p.idle[0].expires
		}
		want := p.Size - len(p.idle) - p.dialing
		if p.backoff > 0 {
			// Probe with one dial at a time while the gateway fails.
			want = min(want, 1-p.dialing)
			if now.Before(p.retryAt) {
				want, next = 0, p.retryAt
			}
		}
		for range max(want, 0) {
			p.dialing++
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.refill(ctx)
			}()
		}
		p.mu.Unlock()
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// expireLocked closes idle connections past their age; the gateway sees a
// FIN before any header and forgets them.
func (p *Pool) expireLocked(now time.Time) {
	for len(p.idle) > 0 && !p.idle[0].expires.After(now) {
		p.idle[0].conn.Close()
		p.idle = p.idle[1:]
		p.counters.recycled.Add(1)
	}
}

func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// refill dials one connection and adds it, or backs off.
func (p *Pool) refill(ctx context.Context) {
	conn, h, err := p.dial(ctx)
	p.mu.Lock()
	defer p.poke()
	defer p.mu.Unlock()
	p.dialing--
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		p.counters.dialFailures.Add(1)
		p.lastErr = err
		if time.Now().Before(p.retryAt) {
			return // a dial of the same round (the pool dials in parallel): one step of backoff per round
		}
		p.backoff = min(max(2*p.backoff, backoffMin), backoffMax)
		// Jitter: terminals that lost the same gateway do not come back together.
		p.retryAt = time.Now().Add(p.backoff/2 + rand.N(p.backoff/2+1))
		p.failLog.Log(p.log, slog.LevelWarn, "warm path to the gateway failed: new flows use fast open meanwhile", "err", err, "retry_in", p.backoff)
		return
	}
	if p.backoff > 0 {
		p.log.Info("warm path to the gateway is back")
	}
	p.backoff, p.lastErr = 0, nil
	p.counters.refills.Add(1)
	age := p.maxAge - rand.N(p.maxAge/5+1)
	p.idle = append(p.idle, &warmConn{conn: conn, hello: h, expires: time.Now().Add(age)})
}

// take hands out an idle connection that is still open, or nil (counted as
// a fallback). The caller must call done when the flow is over.
func (p *Pool) take() *warmConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	p.expireLocked(now)
	for len(p.idle) > 0 {
		w := p.idle[0]
		p.idle = p.idle[1:]
		if !stillOpen(w.conn) {
			w.conn.Close()
			p.counters.dead.Add(1)
			continue
		}
		p.inUse++
		p.counters.taken.Add(1)
		p.poke()
		return w
	}
	if p.backoff > 0 {
		p.counters.fallbackDown.Add(1)
	} else {
		p.counters.fallbackEmpty.Add(1)
	}
	p.poke()
	return nil
}

// done returns a taken connection's slot (the connection itself is closed
// with its flow: one flow per warm connection).
func (p *Pool) done() {
	p.mu.Lock()
	p.inUse--
	p.mu.Unlock()
}

// Stats reads the pool's state and counters.
func (p *Pool) Stats() report.PeerPoolStats {
	p.mu.Lock()
	s := report.PeerPoolStats{Gateway: p.gateway, Size: p.Size, Idle: len(p.idle), InUse: p.inUse, Dialing: p.dialing, BackoffMS: p.backoff.Milliseconds()}
	if p.lastErr != nil {
		s.LastError = p.lastErr.Error()
	}
	p.mu.Unlock()
	s.Refills, s.DialFailures = p.counters.refills.Load(), p.counters.dialFailures.Load()
	s.Taken, s.Recycled, s.Dead = p.counters.taken.Load(), p.counters.recycled.Load(), p.counters.dead.Load()
	s.FallbackEmpty, s.FallbackDown = p.counters.fallbackEmpty.Load(), p.counters.fallbackDown.Load()
	return s
}

// stillOpen tells whether the gateway has neither closed nor reset an idle
// connection (it sends nothing after its hello, so any readable byte, EOF or
// error means the connection is gone).
func stillOpen(c *net.TCPConn) bool {
	open := false
	_ = sockopt.WithFD(c, func(fd int) error {
		var b [1]byte
		_, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		open = errors.Is(err, unix.EAGAIN)
		return nil
	})
	return open
}

// dialGateway opens one connection to the gateway with the long leg's tuning
// (buffers and window scale before the SYN, initial windows from sock_ops
// by cookie) and waits for the gateway's hello.
func dialGateway(ctx context.Context, d *proxy.Dialer, gateway string) (*net.TCPConn, hello, error) {
	var h hello
	// From one of our own addresses whatever --transparent says (a pool
	// connection is pepsal's, not a client's); not timed into the connect
	// histogram, which times the dials of client flows.
	c, err := d.DialOwn(ctx, gateway)
	if err != nil {
		return nil, h, fmt.Errorf("dial gateway %s: %w", gateway, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(d.Timeout))
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	_, err = readFull(c, h[:])
	stop()
	_ = c.SetReadDeadline(time.Time{})
	if err == nil {
		err = checkHello(h)
	}
	if err == nil {
		err = d.Server.Established(c)
	}
	if err == nil && d.Server.KeepAlive == 0 {
		// An idle pool needs keepalive even when the leg has none: a
		// gateway that vanished must not leave dead connections to take.
		err = c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: time.Minute, Interval: 15 * time.Second, Count: tuning.KeepAliveProbes})
	}
	if err != nil {
		c.Close()
		return nil, h, fmt.Errorf("gateway %s: %w", gateway, err)
	}
	return c, h, nil
}

func readFull(c *net.TCPConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			if n > 0 && errors.Is(err, io.EOF) {
				return n, fmt.Errorf("hello cut short after %d bytes", n)
			}
			return n, err
		}
	}
	return n, nil
}

// Warm sends a flow over one of the pool's warm connections: the header
// and the flow's first bytes in one write, then the usual relay. A gateway
// that cannot reach the server resets the warm connection, and the relay
// resets the client. An empty pool leaves the flow to Fallback.
type Warm struct {
	Pool     *Pool
	Fallback proxy.Upstream
}

func (u Warm) Connect(ctx context.Context, c *conn.Conn, f *proxy.Flow) (proxy.ServerLeg, error) {
	w := u.Pool.take()
	if w == nil {
		return u.Fallback.Connect(ctx, c, f)
	}
	c.SetPeer("warm")
	hdr := header{ToS: uint8(f.ToS), Dst: f.Dst, Client: f.Client}
	b, err := hdr.encode(u.Pool.Key, w.hello)
	if err == nil {
		_, err = w.conn.Write(append(b[:], f.First...))
	}
	if err != nil {
		sockopt.Reset(w.conn)
		u.Pool.done()
		return proxy.ServerLeg{}, &proxy.FlowError{Outcome: conn.WasReset, Level: slog.LevelInfo, Msg: "warm path: header not sent", Err: err}
	}
	// The gateway's hello was read from the warm connection, not relayed.
	return proxy.ServerLeg{Conn: w.conn, Name: "warm leg", Read: HelloLen, Tuned: true, Done: u.Pool.done}, nil
}
