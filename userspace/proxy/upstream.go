// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"fmt"
	"net"

	"github.com/pepsal/pepsal/userspace/conn"
)

// Upstream turns an accepted flow into its server leg.
type Upstream interface {
	// Connect returns the flow's server leg, connected, with f.First
	// written to it. A *FlowError says how the flow ends; any other error
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

// Direct dials the flow's destination, then writes its first bytes.
type Direct struct{ Dialer *Dialer }

func (u Direct) Connect(ctx context.Context, _ *conn.Conn, f *Flow) (ServerLeg, error) {
	server, cookie, err := u.Dialer.dial(ctx, f.Client, f.Dst, f.ToS)
	u.Dialer.forget(cookie)
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
	connLog(u.Dialer.Log, c).Debug("dial with fast open", "first_bytes", len(f.First))
	server, cookie, err := u.Dialer.dialFastOpen(ctx, f.Client, f.Dst, f.ToS, f.First)
	u.Dialer.forget(cookie)
	if err != nil {
		return ServerLeg{}, err
	}
	return ServerLeg{Conn: server, Name: "server leg"}, nil
}
