// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// Flow is one accepted connection on its way to its server: what the side
// that accepted it knows (a proxy listener: the socket's addresses; the
// gateway: a terminal's header), and what setup learns on the way.
type Flow struct {
	Leg     *net.TCPConn // the accepted leg: the client's, or at the gateway a terminal's warm connection
	LegName string       // what the flow's lines call Leg
	Client  netip.AddrPort
	Dst     netip.AddrPort // the original destination
	// Self is one more address of this proxy that Dst must not be (the
	// gateway listener's); zero: none.
	Self netip.AddrPort
	// Warm: the flow rides a warm path from its start (the gateway's
	// flows; a terminal's gets on one in its Upstream, Warm).
	Warm  bool
	ToS   uint32
	First []byte // client bytes read before the server leg existed; the Upstream writes them to it
	// PartlyRead: Leg may hold an skb read in part (relay.Setup.PartlyRead).
	PartlyRead bool
	ClientRead int64 // bytes read from Leg and not relayed (the gateway's header)
	// Prepare, if set, runs once the flow is recorded and not refused,
	// before its Upstream: a proxy listener's flow takes its SYN's ToS and
	// its first bytes then. A *FlowError it returns ends the flow.
	Prepare func(*Flow) error
	// OnRelay, if set, runs as the relay starts: the relay runs
	// beforeClose right before it closes Leg, and leave runs once the flow
	// is over (the gateway's pacing of a terminal's starting flows).
	OnRelay func(leg *net.TCPConn) (beforeClose, leave func())
}

// FlowError is a failure before the relay that says how the flow ends and
// the line it logs, where the rule for a failed server leg (IsLocalFailure:
// LocalFailed, else UpstreamFailed) does not apply.
type FlowError struct {
	Outcome conn.Outcome
	Level   slog.Level // of the line
	Msg     string     // the line
	Err     error
}

func (e *FlowError) Error() string { return e.Msg + ": " + e.Err.Error() }
func (e *FlowError) Unwrap() error { return e.Err }

// setup is the one setup path of every connection, whichever side accepted
// it and whatever reaches its server: it records the flow, refuses a loop,
// gets the server leg from up (if the destination policy allows it), tunes
// both legs and starts the relay. A failure on the way resets the accepted
// leg.
func (p *Pipeline) setup(ctx context.Context, f *Flow, up Upstream) {
	c := p.record(f)
	if p.refuseLoop(c, f) {
		return
	}
	leg, err := p.connect(ctx, c, f, up)
	if err != nil {
		p.fail(c, f, err)
		return
	}
	p.tuneLegs(c, f, leg)
	p.startRelay(ctx, c, f, leg)
}

// record adds the flow to the table and makes its accepted leg reset, not
// linger, if pepsal dies.
func (p *Pipeline) record(f *Flow) *conn.Conn {
	var c *conn.Conn
	if f.Warm {
		c = p.Table.Add(f.Client, f.Dst, p.Relay.Via())
		c.SetPeer("warm")
	} else {
		c = p.Table.AddDiverted(f.Client, f.Dst, p.Relay.Via())
	}
	if err := sockopt.ResetOnCrash(f.Leg); err != nil {
		connLog(p.Log, c).Warn(f.LegName, "err", err)
	}
	return c
}

// refuseLoop resets a flow to one of this proxy's own listeners: it would
// be relayed back to itself. (Every other address of this host is the
// destination policy's, in connect.)
func (p *Pipeline) refuseLoop(c *conn.Conn, f *Flow) bool {
	dst := f.Dst
	if !p.own[dst] && (!f.Self.IsValid() || dst != f.Self) {
		return false
	}
	sockopt.Reset(f.Leg)
	p.Table.Remove(c, conn.LoopRefused)
	if onWarmPath(c) {
		connLog(p.Log, c).Info("warm path refused: destination is the proxy itself", "server", dst)
	} else {
		connLog(p.Log, c).Info("refused: connection to the proxy's own address")
	}
	return true
}

// connect gets the flow's server leg from up, once the accept side's
// Prepare is done and the destination policy allows the flow's
// destination (checked last, right before the dial: Prepare may wait for
// the client's first bytes).
func (p *Pipeline) connect(ctx context.Context, c *conn.Conn, f *Flow, up Upstream) (ServerLeg, error) {
	if f.Prepare != nil {
		if err := f.Prepare(f); err != nil {
			return ServerLeg{}, err
		}
	}
	if err := p.dest.Check(f.Dst.Addr()); err != nil {
		return ServerLeg{}, err
	}
	return up.Connect(ctx, c, f)
}

// fail ends a flow that got no server leg. Its client believes it is
// connected: only an RST tells it the truth (at the gateway, the warm
// connection's RST makes the terminal reset its client).
func (p *Pipeline) fail(c *conn.Conn, f *Flow, err error) {
	sockopt.Reset(f.Leg)
	var fe *FlowError
	var de *DeniedError
	switch {
	case errors.As(err, &de):
		p.Table.Deny(c, de.Reason)
		p.logDenied(c, f, de)
	case errors.As(err, &fe):
		p.Table.Remove(c, fe.Outcome)
		connLog(p.Log, c).At(fe.Level, fe.Msg, "err", fe.Err)
	case IsLocalFailure(err):
		p.localFailed.Add(1)
		p.Table.Remove(c, conn.LocalFailed)
		p.onLocalExhaustion(err)
		p.localLog.Log(p.Log, slog.LevelWarn, "connection reset: this host is short of a resource", "client", f.Client, "server", f.Dst, "err", err)
	default:
		p.Table.Remove(c, conn.UpstreamFailed)
		msg := "upstream connect failed"
		if onWarmPath(c) {
			msg = "warm path: upstream connect failed"
		}
		addrLog(p.Log, c).Info(msg, "err", err)
	}
}

// logDenied says that a flow's destination was refused, rate-limited (a
// client scanning the router's addresses must not flood the log): at debug
// level, but a failed route lookup, which is this host's trouble, warns.
func (p *Pipeline) logDenied(c *conn.Conn, f *Flow, de *DeniedError) {
	level, msg := slog.LevelDebug, "refused: destination denied"
	if de.Reason == conn.RouteLookupFailed {
		level = slog.LevelWarn
	}
	if onWarmPath(c) {
		msg = "warm path refused: destination denied"
	}
	args := []any{"conn", c.ID, "client", f.Client, "server", f.Dst, "reason", de.Reason}
	if de.Err != nil {
		args = append(args, "err", de.Err)
	}
	p.denyLog.Log(p.Log, level, msg, args...)
}

// tuneLegs sets what the legs keep while relayed: a reset, not a linger,
// if pepsal dies, and each leg's tuning (unless its Upstream tuned it).
func (p *Pipeline) tuneLegs(c *conn.Conn, f *Flow, leg ServerLeg) {
	log := connLog(p.Log, c)
	if err := sockopt.ResetOnCrash(leg.Conn); err != nil {
		log.Warn(leg.Name, "err", err)
	}
	if err := p.tuning.Client.Established(f.Leg); err != nil {
		log.Warn("tune "+f.LegName, "err", err)
	}
	if !leg.Tuned {
		if err := p.tuning.Server.Established(leg.Conn); err != nil {
			log.Warn("tune "+leg.Name, "err", err)
		}
	}
}

// startRelay hands the connected legs to the relay, and books the flow's
// end when the relay is done. The relay runs on without the goroutine that
// set the flow up (an idle connection holds none); the flow counts as live
// for Serve's drain until done.
func (p *Pipeline) startRelay(ctx context.Context, c *conn.Conn, f *Flow, leg ServerLeg) {
	c.SetState("established")
	c.SetLegs(f.Leg, leg.Conn)
	if !onWarmPath(c) {
		connLog(p.Log, c).Debug("split")
	}
	st := relay.Setup{Pre: int64(len(f.First)), ClientRead: f.ClientRead, ServerRead: leg.Read, PartlyRead: f.PartlyRead}
	leave := func() {}
	if f.OnRelay != nil {
		st.BeforeClose[0], leave = f.OnRelay(f.Leg)
	}
	stop := context.AfterFunc(ctx, func() { sockopt.Reset(f.Leg); sockopt.Reset(leg.Conn) })
	c.AddMoved(st.Pre, 0)
	done := func(how conn.Outcome) {
		stop()
		p.Table.Remove(c, how)
		p.logClosed(c, how)
		leave()
		if leg.Done != nil {
			leg.Done()
		}
	}
	p.wg.Add(1)
	p.Relay.Start(ctx, c, f.Leg, leg.Conn, st, func(how conn.Outcome) {
		defer p.wg.Done()
		done(how)
	})
}

// logClosed says how a flow ended and what it moved (on a warm path
// without the kernel's share, as the warm paths always did).
func (p *Pipeline) logClosed(c *conn.Conn, how conn.Outcome) {
	m := c.Moved()
	if onWarmPath(c) {
		addrLog(p.Log, c).Debug("warm path closed", "outcome", how, "to_server", m.ToServer, "to_client", m.ToClient)
		return
	}
	addrLog(p.Log, c).Debug("closed", "outcome", how, "to_server", m.ToServer, "to_client", m.ToClient, "kernel", m.KernelToServer+m.KernelToClient)
}

// onWarmPath says whether c rides a warm path between two pepsals.
func onWarmPath(c *conn.Conn) bool { return c.Peer() != "" }

// connLog is c's logger, built when a line is written rather than held
// for the connection's life (thousands of idle connections would each keep
// one). On a warm path it names the connection by its id alone, as the
// warm paths always did.
func connLog(log *slog.Logger, c *conn.Conn) logx.ConnLogger {
	cl := addrLog(log, c)
	cl.Brief = onWarmPath(c)
	return cl
}

// addrLog is c's logger with its addresses, warm path or not: a failed
// server leg's line and the closing line always had them.
func addrLog(log *slog.Logger, c *conn.Conn) logx.ConnLogger {
	return logx.ConnLogger{Log: log, ID: c.ID, Client: c.Client, Server: c.Server}
}
