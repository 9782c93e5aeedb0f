// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Listener slots of pepsal_listen (loader.ListenerV4, loader.ListenerV6).
const (
	slotV4 = loader.ListenerV4
	slotV6 = loader.ListenerV6
)

// slotListener is a proxy listener and its slot in pepsal_listen.
type slotListener struct {
	slot uint32
	ln   *net.TCPListener
}

// openSockets takes the sockets the old daemon handed over, when an
// upgrade started this one, or opens fresh ones: the gateway's listener,
// the control socket, the proxy's listeners and the metrics listener, all
// before anything is attached, so that a taken port changes nothing.
func (r *run) openSockets() error {
	// Started by an upgrade: the old daemon's sockets, not new ones.
	inherited, err := InheritedFromEnv()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	r.inherited = inherited
	if r.gateway, err = listenGateway(r.o, inherited); err != nil {
		if inherited != nil {
			inherited.Close()
		}
		return err
	}
	if g := r.gateway; g != nil {
		r.atEnd(func() { g.Close() })
	}
	// The binary to start on SIGHUP: this path, whatever file is there then.
	if r.exe, err = os.Executable(); err != nil {
		return fmt.Errorf("find this program's path: %w", err)
	}
	if r.place, err = report.ThisNamespace(); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if inherited != nil {
		err = r.takeInherited()
	} else {
		err = r.listen()
	}
	if err != nil {
		return err
	}
	r.atEnd(r.closeControl)
	r.atEnd(func() {
		for _, ln := range r.listeners {
			ln.ln.Close()
		}
	})
	if metricsLn := r.metricsLn; metricsLn != nil {
		r.atEnd(func() { metricsLn.Close() })
	}
	return nil
}

// takeInherited serves on the sockets the old daemon handed over.
func (r *run) takeInherited() error {
	in := r.inherited
	r.control, r.metricsLn = in.Control, in.Metrics
	if !isControlAt(in.Control, r.place) {
		// Handed over by a daemon that served elsewhere (an abstract name,
		// before the control socket moved): this version's clients look
		// at r.place. The old daemon closes its own copy once this one serves.
		in.Control.Close()
		var err error
		if r.control, err = ListenControl(r.place); err != nil {
			in.Control = nil
			in.Close()
			return err
		}
		in.Control = r.control
		r.ownsControl = true
	}
	r.listeners = []slotListener{{slotV4, in.V4}}
	if in.V6 != nil {
		r.listeners = append(r.listeners, slotListener{slotV6, in.V6})
	}
	if (r.metricsLn != nil) != (r.o.MetricsAddr != "") || (r.metricsLn != nil && !sameAddr(r.metricsLn.Addr(), r.o.MetricsAddr)) {
		in.Close()
		r.closeControl()
		return ErrUpgradeMetrics
	}
	if port := sockopt.AddrPort(in.V4.Addr()).Port(); int(port) != r.o.ListenPort {
		in.Close()
		r.closeControl()
		return &UnchangeableError{Flag: "--listen-port", Was: strconv.Itoa(int(port)), Now: strconv.Itoa(r.o.ListenPort)}
	}
	return nil
}

// UnchangeableError: a reload asked to change what the new daemon takes
// over from the running one (a listening socket): the running daemon
// keeps serving with what it has; a restart applies it.
type UnchangeableError struct {
	Flag, Was, Now string
}

func (e *UnchangeableError) Error() string {
	return fmt.Sprintf("%s cannot change at a reload (%s, now %s): the running daemon serves on; restart pepsal to apply it", e.Flag, e.Was, e.Now)
}

// sameAddr says whether a handed-over listener is bound where addr (a
// flag's ADDR:PORT) asks; an address it cannot compare counts as the same.
func sameAddr(bound net.Addr, addr string) bool {
	want, err := netip.ParseAddrPort(addr)
	if err != nil {
		return true
	}
	got := sockopt.AddrPort(bound)
	return got.Port() == want.Port() && (got.Addr().Unmap() == want.Addr().Unmap() || got.Addr().IsUnspecified() && want.Addr().IsUnspecified())
}

// closeControl closes the control socket and, unless this daemon handed
// it over or never owned it, removes its name.
func (r *run) closeControl() {
	r.control.Close()
	if r.ownsControl && !r.handedOver.Load() {
		removeControl(r.place)
	}
}

// listen opens the control socket, the proxy's listeners and the metrics
// listener; on an error it closes what it opened.
func (r *run) listen() (err error) {
	if r.control, err = ListenControl(r.place); err != nil {
		return err
	}
	r.ownsControl = true
	if r.listeners, err = listenProxy(r.o.ListenPort, r.o.Tuning, r.log); err != nil {
		r.closeControl()
		return err
	}
	// Bound before anything is attached, so that a taken port changes nothing.
	if addr := r.o.MetricsAddr; addr != "" {
		if r.metricsLn, err = net.Listen("tcp", addr); err != nil {
			r.closeControl()
			for _, ln := range r.listeners {
				ln.ln.Close()
			}
			return &proxy.ListenError{What: "metrics", Addr: addr, Err: err}
		}
	}
	return nil
}

// listenerCookie is the socket cookie of a listener, 0 if unknown.
func listenerCookie(ln *net.TCPListener) uint64 {
	cookie, _ := sockopt.Cookie(ln)
	return cookie
}

func firstListenerCookie(r ListenerRegistry) uint64 {
	if c := r.ListenerCookie(slotV4); c != 0 {
		return c
	}
	return r.ListenerCookie(slotV6)
}

// listenProxy opens the IPv4 and IPv6 listeners on loopback addresses, where
// no remote host can reach them directly. IPv6 is skipped on a host without it.
func listenProxy(port int, t tuning.Tuning, log *slog.Logger) ([]slotListener, error) {
	ln4, err := proxy.Listen(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), t)
	if err != nil {
		return nil, err
	}
	out := []slotListener{{slotV4, ln4}}
	ln6, err := proxy.Listen(net.JoinHostPort("::1", strconv.Itoa(port)), t)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			ln4.Close()
			return nil, err
		}
		log.Warn("no IPv6 listener: IPv6 connections will be forwarded unsplit", "err", err)
		return out, nil
	}
	return append(out, slotListener{slotV6, ln6}), nil
}

// listenGateway opens the gateway's listener for terminals (before anything
// is attached, so that a taken port changes nothing), or takes the one an
// upgraded daemon handed over; nil when not a gateway.
func listenGateway(o *Options, in *Inherited) (*peer.Gateway, error) {
	p := o.Peer
	var handed *net.TCPListener
	if in != nil {
		handed, in.Peer = in.Peer, nil
	}
	if p.Listen == "" {
		if handed != nil {
			handed.Close()
		}
		return nil, nil
	}
	var g *peer.Gateway
	var err error
	if handed != nil && !sameAddr(handed.Addr(), p.Listen) {
		was := handed.Addr().String()
		handed.Close()
		return nil, &UnchangeableError{Flag: "--peer-listen", Was: was, Now: p.Listen}
	}
	if handed != nil {
		g, err = peer.GatewayOn(handed, o.Tuning)
		if err != nil {
			handed.Close()
		}
	} else {
		g, err = peer.Listen(p.Listen, o.Tuning)
	}
	if err != nil {
		return nil, err
	}
	g.Allow = p.Allow
	g.UseKeys(p.Keys, p.KeyFile, o.Log)
	g.MaxWaiting = o.FDBudget.PeerWaiting(o.MaxConns)
	return g, nil
}
