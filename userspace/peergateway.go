package userspace

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

	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Timing of the gateway side of warm paths.
const (
	// PeerMaxAge is how long a terminal keeps an idle warm connection
	// (minus up to a fifth, jitter, so that a pool filled at once is not
	// recycled at once).
	PeerMaxAge = 5 * time.Minute
	// peerIdleLimit: a connection idle longer than the terminal would keep
	// it is a dead or misbehaving terminal's; the gateway closes it.
	peerIdleLimit = PeerMaxAge + time.Minute
	// peerHeaderTimeout: once its first byte arrived, a header must be
	// complete within this (a terminal sends it in one write).
	peerHeaderTimeout = 5 * time.Second
	// peerMaxPending bounds the connections waiting for a header: each holds
	// an fd and a goroutine, and nobody can make the gateway hold more.
	peerMaxPending = 4096
)

// PeerGateway is the gateway side: a listener for terminals that serves
// authenticated warm connections.
type PeerGateway struct {
	Key   []byte
	Allow []netip.Prefix // empty: any source (the key still applies)

	ln         *net.TCPListener
	stopped    context.Context // done once Close is called: idle warm connections are let go
	stop       context.CancelFunc
	pending    atomic.Int64 // accepted, no header yet
	handedOver atomic.Bool  // a new daemon took the listener over (HandedOver)
	share      *peerShare   // flows of a terminal that start together share its link

	accepted, served, idleClosed atomic.Uint64
	mu                           sync.Mutex
	refused                      map[string]uint64
	refuseLog                    logx.RateLog
}

// ListenPeers opens the gateway's listener for terminals on addr. It is an
// ordinary listener (never steered, not transparent) whose accepted sockets
// get the client leg's tuning: toward the terminals it is the long leg.
func ListenPeers(addr string, t tuning.Tuning) (*PeerGateway, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			// An upgraded daemon binds the same port while the old one
			// still holds it (it hands over only the proxy's listeners).
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
	return newPeerGateway(ln.(*net.TCPListener)), nil
}

// PeerGatewayOn is the gateway on the listener an upgraded daemon handed
// over: its accept queue, terminals' connections in it included, carries
// on. The client leg's tuning is set again, as this binary has it.
func PeerGatewayOn(ln *net.TCPListener, t tuning.Tuning) (*PeerGateway, error) {
	if err := sockopt.WithFD(ln, t.Client.BeforeHandshake); err != nil {
		return nil, &proxy.ListenError{What: "peer", Addr: ln.Addr().String(), Err: err}
	}
	return newPeerGateway(ln), nil
}

func newPeerGateway(ln *net.TCPListener) *PeerGateway {
	stopped, stop := context.WithCancel(context.Background())
	return &PeerGateway{ln: ln, stopped: stopped, stop: stop, share: newPeerShare(), refused: map[string]uint64{}, refuseLog: logx.RateLog{Period: 5 * time.Second}}
}

// Port is the listener's port (for sock_ops, which tunes its sockets).
func (g *PeerGateway) Port() uint16 { return sockopt.AddrPort(g.ln.Addr()).Port() }

// Addr is the listener's address.
func (g *PeerGateway) Addr() net.Addr { return g.ln.Addr() }

// Close stops accepting. Warm connections waiting for a header are let go
// at once (the daemon stops: terminals must not start flows on them),
// unless the listener was handed over (HandedOver).
func (g *PeerGateway) Close() error {
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
func (g *PeerGateway) HandedOver() { g.handedOver.Store(true) }

// Listener is the listener, to hand over at an upgrade.
func (g *PeerGateway) Listener() *net.TCPListener { return g.ln }

// Stats reads the counters.
func (g *PeerGateway) Stats() report.PeerGatewayStats {
	s := report.PeerGatewayStats{Listen: g.ln.Addr().String(), Accepted: g.accepted.Load(), Waiting: g.pending.Load(),
		Served: g.served.Load(), IdleClosed: g.idleClosed.Load(), Refused: map[string]uint64{}, PacedStarts: g.share.paced.Load(), Starting: g.share.starting()}
	g.mu.Lock()
	for _, r := range report.AuthReasons {
		s.Refused[r] = g.refused[r]
	}
	g.mu.Unlock()
	return s
}

func (g *PeerGateway) allowed(a netip.Addr) bool {
	if len(g.Allow) == 0 {
		return true
	}
	for _, p := range g.Allow {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// refuse resets a peer connection without dialing anything, and counts why.
func (g *PeerGateway) refuse(in proxy.Intake, conn *net.TCPConn, reason string, err error) {
	sockopt.Reset(conn)
	g.mu.Lock()
	g.refused[reason]++
	g.mu.Unlock()
	in.Warn("peer connection refused", "from", conn.RemoteAddr(), "reason", reason, "err", err)
}

// Serve accepts terminals' connections until the listener closes (an
// Acceptor: each authentic header's flow goes to in).
func (g *PeerGateway) Serve(ctx context.Context, in proxy.Intake) {
	in.AcceptEach(g.ln, "peer", func(conn *net.TCPConn) {
		g.accepted.Add(1)
		if !g.allowed(sockopt.AddrPort(conn.RemoteAddr()).Addr()) {
			g.refuse(in, conn, report.AuthNotAllowed, errors.New("source not in the allowed prefixes"))
			return
		}
		if g.pending.Add(1) > peerMaxPending {
			g.pending.Add(-1)
			g.refuse(in, conn, report.AuthOverload, fmt.Errorf("%d connections already wait for a header", peerMaxPending))
			return
		}
		in.Go(func() { g.serve(ctx, in, conn) })
	})
}

// serve serves one warm connection: hello, wait (idle) for the header,
// check it, dial the destination, relay. Until the header is accepted
// nothing is dialed.
func (g *PeerGateway) serve(ctx context.Context, in proxy.Intake, conn *net.TCPConn) {
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
	g.relay(ctx, in, conn, hdr, data[headerLen:], drained)
}

// readHeader reads until a whole header is in: the first byte may take up to
// peerIdleLimit (the connection waits in a terminal's pool), the rest at most
// peerHeaderTimeout. It then reads on without waiting until a read comes back
// short, so that no skb is left half read (see firstBytes); drained is false
// when it stopped at the bound instead.
func readHeader(conn *net.TCPConn) (data []byte, drained bool, err error) {
	const bound = 1 << 20
	buf := make([]byte, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(peerIdleLimit))
	defer conn.SetReadDeadline(time.Time{})
	for {
		n, rerr := conn.Read(buf)
		if n > 0 && len(data) == 0 {
			_ = conn.SetReadDeadline(time.Now().Add(peerHeaderTimeout))
		}
		data = append(data, buf[:n]...)
		if len(data) >= 4 && [4]byte(data[:4]) != headerMagic {
			return data, true, &authError{report.AuthGarbage, "bad magic"}
		}
		if rerr != nil {
			if len(data) > 0 && (sockopt.IsTimeout(rerr) || errors.Is(rerr, io.EOF)) {
				return data, true, &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d header bytes, then %v", len(data), headerLen, rerr)}
			}
			return data, true, rerr
		}
		if len(data) >= headerLen && n < len(buf) {
			return data, true, nil
		}
		if len(data) >= headerLen {
			break // a full read: more may be queued
		}
	}
	// Non-blocking reads of what is queued, until a short one.
	rc, err := conn.SyscallConn()
	if err != nil {
		return data, true, err
	}
	for len(data) < bound {
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			m, rerr = unix.Read(int(fd), buf)
			return true
		}); err != nil {
			return data, true, err
		}
		if errors.Is(rerr, unix.EAGAIN) || m == 0 {
			return data, true, nil
		}
		if rerr != nil {
			return data, true, rerr
		}
		data = append(data, buf[:m]...)
		if m < len(buf) {
			return data, true, nil
		}
	}
	return data, false, nil
}

// relay sets up the flow an authentic header asks for, with the warm
// connection as its client leg: a refused, unreachable or silent server
// resets the warm connection, which makes the terminal reset its client.
func (g *PeerGateway) relay(ctx context.Context, in proxy.Intake, warm *net.TCPConn, hdr peerHeader, rest []byte, drained bool) {
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
		ClientRead: headerLen, // the header was read from the warm connection, not relayed
		OnRelay:    g.share.join,
	})
}
