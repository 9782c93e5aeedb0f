// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// Acceptor is an accept side of the pipeline: the proxy's listeners, or
// the warm-path gateway, which hands on the flows its terminals' headers
// ask for.
type Acceptor interface {
	// Serve accepts until Close, handing each flow to in. ctx is the
	// flows' context: it is canceled when a drain runs out.
	Serve(ctx context.Context, in Intake)
	// Close stops accepting; Serve returns soon after.
	Close() error
}

// Intake is what the pipeline gives an accept side: the accept loop every
// side runs, the drain its flows count in, and the one setup path, with
// the Upstream chosen for that side.
type Intake struct {
	p  *Pipeline
	up Upstream
}

// acceptSide is an Acceptor with the Upstream that reaches its flows' servers.
type acceptSide struct {
	acc Acceptor
	up  Upstream
}

// Accept adds an accept side besides the proxy listeners (the gateway's),
// whose flows reach their servers through up. Call before Serve.
func (p *Pipeline) Accept(a Acceptor, up Upstream) {
	p.sides = append(p.sides, acceptSide{a, up})
}

// Serve accepts until ctx is done, then waits for live connections to end, at
// most until drainCtx is done, after which they are reset.
func (p *Pipeline) Serve(ctx, drainCtx context.Context) {
	var acceptWG sync.WaitGroup
	connCtx, cancelConns := context.WithCancel(context.Background())
	defer cancelConns()
	sides := append([]acceptSide{{proxyListeners{p}, p.Upstream}}, p.sides...)
	for _, side := range sides {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			side.acc.Serve(connCtx, Intake{p, side.up})
		}()
	}
	<-ctx.Done()
	for _, side := range sides {
		side.acc.Close()
	}
	acceptWG.Wait()

	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-drainCtx.Done():
		if n := p.Table.Len(); n > 0 {
			p.Log.Info("drain timeout: resetting live connections", "count", n)
		}
		cancelConns()
		<-done
	}
}

// AcceptEach hands each accepted connection to handle until the listener
// is closed. Other errors (EMFILE and the like) are waited out with a
// growing pause: the connection stays in the kernel's accept queue
// meanwhile.
func (in Intake) AcceptEach(ln *net.TCPListener, what string, handle func(*net.TCPConn)) {
	backoff := logx.AcceptBackoff{Log: in.p.Log, What: what}
	for {
		conn, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			in.p.onLocalExhaustion(err)
			backoff.Failed(err)
			continue
		}
		backoff.OK()
		handle(conn)
	}
}

// Go runs f in a goroutine of its own that Serve's drain waits for.
func (in Intake) Go(f func()) {
	in.p.wg.Add(1)
	go func() {
		defer in.p.wg.Done()
		f()
	}()
}

// Setup sets the flow up (the one setup path, with this side's Upstream)
// and hands it to the relay.
func (in Intake) Setup(ctx context.Context, f *Flow) { in.p.setup(ctx, f, in.up) }

// Warn writes a line rate-limited together with the local-failure line: a
// storm of either must not become a storm of lines.
func (in Intake) Warn(msg string, args ...any) {
	in.p.localLog.Log(in.p.Log, slog.LevelWarn, msg, args...)
}

// proxyListeners is the accept side of the proxy's listeners, where the
// BPF side steers the diverted SYNs.
type proxyListeners struct{ p *Pipeline }

// Serve splits each connection of every listener until they close.
func (pl proxyListeners) Serve(ctx context.Context, in Intake) {
	var wg sync.WaitGroup
	for _, ln := range pl.p.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.AcceptEach(ln, "proxy", func(conn *net.TCPConn) {
				in.Go(func() { pl.p.split(ctx, conn, in) })
			})
		}()
	}
	wg.Wait()
}

// Close closes the listeners.
func (pl proxyListeners) Close() error {
	for _, ln := range pl.p.listeners {
		ln.Close() // its SOCKMAP entry goes with it: new SYNs are forwarded unsplit
	}
	return nil
}

// split sets up a connection of a proxy listener: the kernel has completed
// the client's handshake on behalf of the server; now reach the server or
// reset the client.
func (p *Pipeline) split(ctx context.Context, client *net.TCPConn, in Intake) {
	in.Setup(ctx, &Flow{
		Leg:     client,
		LegName: "client leg",
		Client:  sockopt.AddrPort(client.RemoteAddr()),
		Dst:     sockopt.AddrPort(client.LocalAddr()), // sk_lookup keeps the original destination
		Prepare: p.readFirst,
	})
}

// readFirst takes what a proxy listener's flow brings before its server
// leg: its SYN's ToS, and with fast open its first bytes.
func (p *Pipeline) readFirst(f *Flow) error {
	if p.diverted != nil {
		if info, ok := p.diverted.TakeDiverted(f.Client, f.Dst); ok {
			f.ToS = info.Tos
		}
	}
	if !p.tuning.FastOpen.Dial {
		return nil
	}
	first, drained, err := firstBytes(f.Leg, p.tuning.FastOpen.Wait)
	if err != nil && !errors.Is(err, io.EOF) {
		return &FlowError{Outcome: conn.WasReset, Level: slog.LevelDebug, Msg: "client failed before its first bytes", Err: err}
	}
	f.First, f.PartlyRead = first, !drained
	return nil
}
