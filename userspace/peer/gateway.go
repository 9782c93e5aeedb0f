// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Timing of the gateway side of warm paths.
const (
	// MaxAge is how long a terminal keeps an idle warm connection
	// (minus up to a fifth, jitter, so that a pool filled at once is not
	// recycled at once).
	MaxAge = 5 * time.Minute
	// idleLimit: a connection idle longer than the terminal would keep
	// it is a dead or misbehaving terminal's; the gateway closes it.
	idleLimit = MaxAge + time.Minute
	// headerTimeout: once its first byte arrived, a header must be
	// complete within this (a terminal sends it in one write).
	headerTimeout = 5 * time.Second
	// maxPending bounds the connections waiting for a header: each holds
	// an fd and a goroutine, and nobody can make the gateway hold more.
	maxPending = 4096
)

// Gateway is the gateway side: a listener for terminals that serves
// authenticated warm connections.
type Gateway struct {
	Key   []byte
	Allow []netip.Prefix // empty: any source (the key still applies); IPv4-mapped ones are taken as IPv4

	ln         *net.TCPListener
	stopped    context.Context // done once Close is called: idle warm connections are let go
	stop       context.CancelFunc
	pending    atomic.Int64 // accepted, no header yet
	handedOver atomic.Bool  // a new daemon took the listener over (HandedOver)
	pacing     *pacing      // flows of a terminal that start together share its link

	accepted, served, idleClosed atomic.Uint64
	mu                           sync.Mutex
	refused                      map[string]uint64
}

// Listen opens the gateway's listener for terminals on addr. It is an
// ordinary listener (never steered, not transparent) whose accepted sockets
// get the client leg's tuning: toward the terminals it is the long leg.
func Listen(addr string, t tuning.Tuning) (*Gateway, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			// An upgraded daemon binds the same port while the old one
			// still holds it: the listener is handed over at an upgrade,
			// and a successor that cannot take it binds its own.
			serr = errors.Join(sockopt.Wrap("SO_REUSEPORT", unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)),
				t.Client.BeforeHandshake(int(fd)))
		}); err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false) // its sockets may go into the relay's SOCKHASH
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, &proxy.ListenError{What: "peer", Addr: addr, Err: err}
	}
	return newGateway(ln.(*net.TCPListener)), nil
}

// GatewayOn is the gateway on the listener an upgraded daemon handed
// over: its accept queue, terminals' connections in it included, carries
// on. The client leg's tuning is set again, as this binary has it.
func GatewayOn(ln *net.TCPListener, t tuning.Tuning) (*Gateway, error) {
	if err := sockopt.WithFD(ln, t.Client.BeforeHandshake); err != nil {
		return nil, &proxy.ListenError{What: "peer", Addr: ln.Addr().String(), Err: err}
	}
	return newGateway(ln), nil
}

func newGateway(ln *net.TCPListener) *Gateway {
	stopped, stop := context.WithCancel(context.Background())
	return &Gateway{ln: ln, stopped: stopped, stop: stop, pacing: newPacing(), refused: map[string]uint64{}}
}

// Port is the listener's port (for sock_ops, which tunes its sockets).
func (g *Gateway) Port() uint16 { return sockopt.AddrPort(g.ln.Addr()).Port() }

// Addr is the listener's address.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// Close stops accepting. Warm connections waiting for a header are let go
// at once (the daemon stops: terminals must not start flows on them),
// unless the listener was handed over (HandedOver).
func (g *Gateway) Close() error {
	if !g.handedOver.Load() {
		g.stop()
	}
	return g.ln.Close()
}

// HandedOver says that a new daemon serves the listener now (an upgrade).
// Close then leaves the warm connections accepted here waiting for their
// headers, until the terminal recycles them or the upgrade's drain ends: a
// terminal may be sending a header on one right now, and a reset would
// reach it after it had handed that connection a client's flow.
func (g *Gateway) HandedOver() { g.handedOver.Store(true) }

// Listener is the listener, to hand over at an upgrade.
func (g *Gateway) Listener() *net.TCPListener { return g.ln }

// Stats reads the counters.
func (g *Gateway) Stats() report.PeerGatewayStats {
	s := report.PeerGatewayStats{Listen: g.ln.Addr().String(), Accepted: g.accepted.Load(), Waiting: g.pending.Load(),
		Served: g.served.Load(), IdleClosed: g.idleClosed.Load(), Refused: map[string]uint64{}, PacedStarts: g.pacing.paced.Load(), Starting: g.pacing.starting()}
	g.mu.Lock()
	for _, r := range report.AuthReasons {
		s.Refused[r] = g.refused[r]
	}
	g.mu.Unlock()
	return s
}

// allowed says whether a terminal at a may connect. Both sides are
// unmapped first: an IPv4-mapped prefix (::ffff:10.0.0.0/104) is its IPv4
// prefix, which an IPv6 prefix never contains.
func (g *Gateway) allowed(a netip.Addr) bool {
	if len(g.Allow) == 0 {
		return true
	}
	for _, p := range g.Allow {
		if proxy.UnmapPrefix(p).Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// refuse resets a peer connection without dialing anything, and counts why.
func (g *Gateway) refuse(in proxy.Intake, conn *net.TCPConn, reason string, err error) {
	sockopt.Reset(conn)
	g.mu.Lock()
	g.refused[reason]++
	g.mu.Unlock()
	in.Warn("peer connection refused", "from", conn.RemoteAddr(), "reason", reason, "err", err)
}

// Serve accepts terminals' connections until the listener closes (an
// Acceptor: each authentic header's flow goes to in).
func (g *Gateway) Serve(ctx context.Context, in proxy.Intake) {
	in.AcceptEach(g.ln, "peer", func(conn *net.TCPConn) {
		g.accepted.Add(1)
		if !g.allowed(sockopt.AddrPort(conn.RemoteAddr()).Addr()) {
			g.refuse(in, conn, report.AuthNotAllowed, errors.New("source not in the allowed prefixes"))
			return
		}
		if g.pending.Add(1) > maxPending {
			g.pending.Add(-1)
			g.refuse(in, conn, report.AuthOverload, fmt.Errorf("%d connections already wait for a header", maxPending))
			return
		}
		in.Go(func() { g.serve(ctx, in, conn) })
	})
}

// serve serves one warm connection: hello, wait (idle) for the header,
// check it, dial the destination, relay. Until the header is accepted
// nothing is dialed.
func (g *Gateway) serve(ctx context.Context, in proxy.Intake, conn *net.TCPConn) {
	waiting := true
	defer func() {
		if waiting {
			g.pending.Add(-1)
		}
	}()
	// Stopping: a connection still waiting for its header is dropped at
	// once (the terminal's pool forgets it), not drained.
	cut := func() { _ = conn.SetDeadline(time.Now()) }
	stop1, stop2 := context.AfterFunc(ctx, cut), context.AfterFunc(g.stopped, cut)
	stop := func() { stop1(); stop2() }
	h, err := newHello()
	if err == nil {
		_, err = conn.Write(h[:])
	}
	if err != nil {
		stop()
		sockopt.Reset(conn)
		return
	}
	data, drained, err := readHeader(conn)
	stop()
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		var ae *authError
		switch {
		case errors.As(err, &ae):
			g.refuse(in, conn, ae.reason, err)
		case len(data) == 0:
			// The terminal recycled it, or it sat idle past the limit, or
			// we are stopping: not an attack, nothing to count as one.
			g.idleClosed.Add(1)
			sockopt.Reset(conn)
		default:
			g.refuse(in, conn, report.AuthIncomplete, err)
		}
		return
	}
	hdr, err := decodeHeader(g.Key, h, data)
	if err != nil {
		var ae *authError
		errors.As(err, &ae)
		g.refuse(in, conn, ae.reason, err)
		return
	}
	g.pending.Add(-1)
	waiting = false
	g.served.Add(1)
	g.relay(ctx, in, conn, hdr, data[HeaderLen:], drained)
}

// readHeader reads until a whole header is in: the first byte may take up to
// idleLimit (the connection waits in a terminal's pool), the rest at most
// headerTimeout. It then reads on without waiting until a read comes back
// short, so that no skb is left half read (see firstBytes); drained is false
// when it stopped at the bound instead.
func readHeader(conn *net.TCPConn) (data []byte, drained bool, err error) {
	const bound = 1 << 20
	buf := make([]byte, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(idleLimit))
	defer conn.SetReadDeadline(time.Time{})
	for {
		n, rerr := conn.Read(buf)
		if n > 0 && len(data) == 0 {
			_ = conn.SetReadDeadline(time.Now().Add(headerTimeout))
		}
		data = append(data, buf[:n]...)
		if len(data) >= 4 && [4]byte(data[:4]) != headerMagic {
			return data, true, &authError{report.AuthGarbage, "bad magic"}
		}
		if rerr != nil {
			if len(data) > 0 && (sockopt.IsTimeout(rerr) || errors.Is(rerr, io.EOF)) {
				return data, true, &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d header bytes, then %v", len(data), HeaderLen, rerr)}
			}
			return data, true, rerr
		}
		if len(data) >= HeaderLen && n < len(buf) {
			return data, true, nil
		}
		if len(data) >= HeaderLen {
			// A full read: more may be queued. Read it without waiting,
			// until a short read.
			return proxy.ReadQueued(conn, data, bound)
		}
	}
}

// relay sets up the flow an authentic header asks for, with the warm
// connection as its client leg: a refused, unreachable or silent server
// resets the warm connection, which makes the terminal reset its client.
func (g *Gateway) relay(ctx context.Context, in proxy.Intake, warm *net.TCPConn, hdr header, rest []byte, drained bool) {
	in.Setup(ctx, &proxy.Flow{
		Leg:        warm,
		LegName:    "warm leg",
		Client:     hdr.Client,
		Dst:        hdr.Dst,
		Self:       sockopt.AddrPort(warm.LocalAddr()),
		Warm:       true,
		ToS:        uint32(hdr.ToS),
		First:      rest,
		PartlyRead: !drained,
		ClientRead: HeaderLen, // the header was read from the warm connection, not relayed
		OnRelay:    g.pacing.join,
	})
}
