// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// Listen opens a transparent listener on addr. IP_TRANSPARENT lets it answer
// SYNs addressed to foreign servers (the SYN-ACK leaves from the server's
// address); MPTCP is off because an MPTCP listener cannot go into a SOCKMAP.
func Listen(addr string, t tuning.Tuning) (*net.TCPListener, error) {
	// KeepAlive -1: Go would set its own keepalive (4 setsockopts) on every
	// accepted socket, which tuning.Leg.Established then replaces.
	lc := net.ListenConfig{Control: t.ListenerControl(), KeepAlive: -1}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, &ListenError{What: "proxy", Addr: addr, Err: err}
	}
	return ln.(*net.TCPListener), nil
}

// ListenError is a listener that could not be opened: the proxy's, the
// warm-path gateway's ("peer") or the metrics server's. errors.Is(err,
// unix.EADDRINUSE) tells a taken port.
type ListenError struct {
	What string // "proxy", "peer" or "metrics"
	Addr string
	Err  error
}

func (e *ListenError) Error() string {
	inUse := errors.Is(e.Err, unix.EADDRINUSE)
	switch {
	case e.What == "proxy" && inUse:
		return "listener port in use: " + e.Addr
	case e.What == "proxy":
		return fmt.Sprintf("listen on %s: %v", e.Addr, e.Err)
	case inUse:
		return fmt.Sprintf("%s listener %s: address in use", e.What, e.Addr)
	}
	return fmt.Sprintf("%s listener %s: %v", e.What, e.Addr, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }
