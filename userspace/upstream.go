package userspace

import (
	"context"
	"fmt"
	"net"

	"github.com/pepsal/pepsal/userspace/conn"
)

// Upstream turns an accepted flow into its server leg.
type Upstream interface {
	// Connect returns the flow's server leg, connected, with f.First
	// written to it. A *flowError says how the flow ends; any other error
	// is a local failure (IsLocalFailure) or the upstream's.
	Connect(ctx context.Context, c *conn.Conn, f *Flow) (ServerLeg, error)
}

// ServerLeg is the connection an Upstream made for a flow.
type ServerLeg struct {
	Conn  *net.TCPConn
	Name  string // what the flow's lines call it
	Read  int64  // bytes read from Conn and not relayed (the gateway's hello)
	Tuned bool   // the server leg's tuning is set already (a warm connection's, at its dial)
	Done  func() // run once the flow is over; nil: nothing to run
}

// proxyUpstream is what reaches the servers of the proxy listeners' flows:
// fast open, behind a pool's warm connections on a terminal.
func (s *Splitter) proxyUpstream() Upstream {
	var up Upstream = FastOpen{Direct{s}}
	if s.Pool != nil {
		up = Warm{Pool: s.Pool, Fallback: up}
	}
	return up
}

// Direct dials the flow's destination, then writes its first bytes.
type Direct struct{ s *Splitter }

func (d Direct) Connect(ctx context.Context, _ *conn.Conn, f *Flow) (ServerLeg, error) {
	server, cookie, err := d.s.dial(ctx, f.Client, f.Dst, f.ToS)
	d.s.forgetUpstream(cookie)
	if err != nil {
		return ServerLeg{}, err
	}
	if len(f.First) > 0 {
		if _, err := server.Write(f.First); err != nil {
			server.Close()
			return ServerLeg{}, fmt.Errorf("write first bytes: %w", err)
		}
	}
	return ServerLeg{Conn: server, Name: "server leg"}, nil
}

// FastOpen dials with the flow's first bytes in the SYN; a flow that has
// none goes to its Direct.
type FastOpen struct{ Direct }

func (u FastOpen) Connect(ctx context.Context, c *conn.Conn, f *Flow) (ServerLeg, error) {
	if len(f.First) == 0 {
		return u.Direct.Connect(ctx, c, f)
	}
	u.s.connLog(c).Debug("dial with fast open", "first_bytes", len(f.First))
	server, cookie, err := u.s.dialFastOpen(ctx, f.Client, f.Dst, f.ToS, f.First)
	u.s.forgetUpstream(cookie)
	if err != nil {
		return ServerLeg{}, err
	}
	return ServerLeg{Conn: server, Name: "server leg"}, nil
}

// forgetUpstream unregisters a dialed server leg from sock_ops (cookie 0:
// never registered). sock_ops reads the entry at connect (initial receive
// window) and at establishment (initial congestion window), both behind us
// now: a live connection must not hold a slot of a bounded map.
func (s *Splitter) forgetUpstream(cookie uint64) {
	if cookie != 0 {
		s.Tuner.ForgetUpstream(cookie)
	}
}
