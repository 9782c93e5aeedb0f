// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Timing and limits of the gateway side of warm paths.
const (
	// MaxAge is how long a terminal keeps an idle warm connection
	// (minus up to a fifth, jitter, so that a pool filled at once is not
	// recycled at once).
	MaxAge = 5 * time.Minute
	// idleLimit: a connection idle longer than the terminal would keep
	// it is a dead or misbehaving terminal's; the gateway closes it.
	idleLimit = MaxAge + time.Minute
	// authTimeout: a new connection must be authenticated within this of
	// its accept. A terminal sends its auth as soon as the hello arrives,
	// one round trip (600 ms over a geostationary link): the rest is room
	// for a lost segment or two.
	authTimeout = 5 * time.Second
	// headerTimeout: once its first byte arrived, a header must be
	// complete within this (a terminal sends it in one write).
	headerTimeout = 5 * time.Second
	// PerSourceMax bounds the connections one source (an IPv4 address, an
	// IPv6 /64) may have authenticating at once: a terminal dials at most
	// maxDialing at once, a few terminals may share an address, and one
	// host cannot hold the port's slots for longer than authTimeout.
	PerSourceMax = 4 * maxDialing
	// DefaultMaxWaiting bounds the connections held before their flows
	// (authenticating or pooled) when the daemon sets no MaxWaiting.
	DefaultMaxWaiting = 4096
)

// Gateway is the gateway side: a listener for terminals that serves
// authenticated warm connections.
type Gateway struct {
	Allow []netip.Prefix // empty: any source (the keys still apply); IPv4-mapped ones are taken as IPv4
	// MaxWaiting bounds the connections held before their flows start,
	// authenticating or idle in a pool: each holds an fd and a goroutine.
	// The daemon derives it from its fd budget (proxy.FDBudget); 0:
	// DefaultMaxWaiting.
	MaxWaiting int

	terms      *terminals // the keys in force (UseKeys)
	ln         *net.TCPListener
	stopped    context.Context // done once Close is called: idle warm connections are let go
	stop       context.CancelFunc
	handedOver atomic.Bool // a new daemon took the listener over (HandedOver)
	pacing     *pacing     // flows of a terminal that start together share its link

	accepted, served, idleClosed atomic.Uint64
	mu                           sync.Mutex
	waiting, authenticating      int                // held: authenticating or pooled; of them authenticating
	sources                      map[netip.Addr]int // authenticating, by sourceKey
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
	return &Gateway{ln: ln, stopped: stopped, stop: stop, pacing: newPacing(), refused: map[string]uint64{}, sources: map[netip.Addr]int{}}
}

// UseKeys sets the terminals' keys, loaded from file (LoadKeys). The
// gateway reads file again whenever it changes (every keyCheckEvery),
// until Serve returns; file "" keeps keys for good (tests).
func (g *Gateway) UseKeys(keys *Keys, file string, log *slog.Logger) {
	g.terms = newTerminals(keys, file, keys.stamp, log)
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
	s := report.PeerGatewayStats{Listen: g.ln.Addr().String(), Accepted: g.accepted.Load(), MaxWaiting: g.maxWaiting(), PerSource: PerSourceMax,
		Served: g.served.Load(), IdleClosed: g.idleClosed.Load(), Refused: map[string]uint64{}, PacedStarts: g.pacing.paced.Load(), Starting: g.pacing.starting()}
	g.mu.Lock()
	s.Waiting, s.Authenticating = int64(g.waiting), int64(g.authenticating)
	for _, r := range report.AuthReasons {
		s.Refused[r] = g.refused[r]
	}
	g.mu.Unlock()
	if g.terms != nil {
		g.terms.stats(&s)
	}
	return s
}

func (g *Gateway) maxWaiting() int {
	if g.MaxWaiting > 0 {
		return g.MaxWaiting
	}
	return DefaultMaxWaiting
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

// refuse resets a peer connection without dialing anything, and counts
// why, also under its terminal's id once the id was read (tk not nil).
func (g *Gateway) refuse(in proxy.Intake, conn *net.TCPConn, tk *TerminalKey, reason string, err error) {
	// Counted before the reset: whoever sees the reset finds it counted.
	g.mu.Lock()
	g.refused[reason]++
	g.mu.Unlock()
	args := []any{"from", conn.RemoteAddr(), "reason", reason, "err", err}
	if tk != nil {
		g.terms.count(tk.ID, reason, false)
		args = append(args, "key_id", tk.ID)
	}
	sockopt.Reset(conn)
	in.Warn("peer connection refused", args...)
}

// sourceKey is what PerSourceMax counts by: an IPv4 address, or the /64 of
// an IPv6 one (a host usually holds a whole /64).
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// admit decides at accept, before any byte is sent or any goroutine
// started, whether a new connection from src may authenticate: its source
// allowed, the admission limit not reached (full: reached), room under MaxWaiting and
// under its source's PerSourceMax. Admitted, it is counted as held and
// authenticating until release and authenticated.
func (g *Gateway) admit(full bool, src netip.Addr) (reason string, err error) {
	if !g.allowed(src) {
		return report.AuthNotAllowed, errors.New("source not in the allowed prefixes")
	}
	if full {
		return report.AuthFull, errors.New("the connection limit (--max-conns) is reached: terminals use fast open meanwhile")
	}
	key := sourceKey(src)
	g.mu.Lock()
	defer g.mu.Unlock()
	if limit := g.maxWaiting(); g.waiting >= limit {
		return report.AuthOverload, fmt.Errorf("%d connections already held before their flows, the most the fd budget allows", limit)
	}
	if g.sources[key] >= PerSourceMax {
		return report.AuthPerSource, fmt.Errorf("%d connections of this source already authenticating", PerSourceMax)
	}
	g.sources[key]++
	g.waiting++
	g.authenticating++
	return "", nil
}

// authenticated ends a connection's authenticating phase (either way).
func (g *Gateway) authenticated(src netip.Addr) {
	key := sourceKey(src)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.authenticating--
	if g.sources[key]--; g.sources[key] <= 0 {
		delete(g.sources, key)
	}
}

// release ends a connection's hold: its flow starts, or it is closed.
func (g *Gateway) release() {
	g.mu.Lock()
	g.waiting--
	g.mu.Unlock()
}

// Serve accepts terminals' connections until the listener closes (an
// Acceptor: each authentic header's flow goes to in). A connection refused
// at accept costs nothing after its reset.
func (g *Gateway) Serve(ctx context.Context, in proxy.Intake) {
	if g.terms == nil {
		g.terms = newTerminals(&Keys{byID: map[string]*TerminalKey{}}, "", fileStamp{}, slog.Default()) // no key: every auth is refused
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { g.terms.watchKeys(watchCtx); close(watched) }()
	defer func() { stopWatch(); <-watched }()
	in.AcceptEach(g.ln, "peer", func(conn *net.TCPConn) {
		g.accepted.Add(1)
		src := sockopt.AddrPort(conn.RemoteAddr()).Addr()
		if reason, err := g.admit(in.Full(), src); err != nil {
			g.refuse(in, conn, nil, reason, err)
			return
		}
		in.Go(func() { g.serve(ctx, in, conn, src) })
	})
}

// serve serves one warm connection: hello and auth (within authTimeout),
// wait (idle) for the header, check it, dial the destination, relay.
// Until the header is accepted nothing is dialed.
func (g *Gateway) serve(ctx context.Context, in proxy.Intake, conn *net.TCPConn, src netip.Addr) {
	held := true
	defer func() {
		if held {
			g.release()
		}
	}()
	w := watchConn(ctx, g.stopped, conn)
	h, tk, err := g.authenticate(conn, w)
	g.authenticated(src)
	if err != nil {
		w.stop()
		g.authFailed(in, conn, w, tk, err)
		return
	}
	data, drained, ok := g.waitHeader(in, conn, w, tk)
	if !ok {
		return
	}
	hdr, err := decodeHeader(tk.Key, h, data)
	if err == nil && !tk.AllowsClient(hdr.Client.Addr()) {
		err = &authError{report.AuthClientDeny, fmt.Sprintf("client %v is not in the clients= of key id %q", hdr.Client.Addr(), tk.ID)}
	}
	if err != nil {
		var ae *authError
		errors.As(err, &ae)
		g.refuse(in, conn, tk, ae.reason, err)
		return
	}
	held = false
	g.release()
	g.served.Add(1)
	g.terms.count(tk.ID, "", false)
	g.relay(ctx, in, conn, hdr, data[HeaderLen:], drained)
}

// waitHeader holds an authenticated connection in tk's pool until its
// header comes (ok), or it ends: closed idle, refused, or cut because tk
// was revoked.
func (g *Gateway) waitHeader(in proxy.Intake, conn *net.TCPConn, w *watch, tk *TerminalKey) (data []byte, drained, ok bool) {
	if !g.terms.pool(tk, w) {
		w.revoke() // revoked while it authenticated
	}
	data, drained, err := readHeader(conn, w)
	g.terms.unpool(tk, w)
	w.stop()
	_ = conn.SetDeadline(time.Time{})
	var ae *authError
	switch {
	case err == nil:
		return data, drained, true
	case w.wasRevoked():
		g.terms.count(tk.ID, "", true)
		g.refuse(in, conn, nil, report.AuthRevoked, fmt.Errorf("pooled connection of key id %q closed: its key was removed or changed", tk.ID))
	case errors.As(err, &ae):
		g.refuse(in, conn, tk, ae.reason, err)
	case len(data) == 0:
		// The terminal recycled it, or it sat idle past the limit, or
		// we are stopping: not an attack, nothing to count as one.
		g.idleClosed.Add(1)
		sockopt.Reset(conn)
	default:
		g.refuse(in, conn, tk, report.AuthIncomplete, err)
	}
	return nil, false, false
}

// authFailed ends a connection that did not authenticate: refused under
// its reason (and its id, tk, once read), or, cut because the daemon stops,
// closed idle.
func (g *Gateway) authFailed(in proxy.Intake, conn *net.TCPConn, w *watch, tk *TerminalKey, err error) {
	if w.wasCut() {
		g.idleClosed.Add(1)
		sockopt.Reset(conn)
		return
	}
	var ae *authError
	if !errors.As(err, &ae) {
		ae = &authError{report.AuthClosed, err.Error()}
	}
	g.refuse(in, conn, tk, ae.reason, err)
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
		ClientRead: AuthLen + HeaderLen, // the auth and the header were read from the warm connection, not relayed
		OnRelay:    g.pacing.join,
	})
}
