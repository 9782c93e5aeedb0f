// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// What the gateway reads from a terminal's connection before its flow:
// the auth message, at once, and later the header, each into a buffer of
// its own size (a gateway holds thousands of these connections), each
// under its deadline, cut when the daemon stops.

// authenticate greets a new connection and checks its terminal's auth
// message, all within authTimeout of the accept, into a buffer of one auth
// message; it welcomes an authentic terminal and returns the hello (the
// header is checked against it) and the terminal's key.
func (g *Gateway) authenticate(conn *net.TCPConn, w *watch) (hello, *TerminalKey, error) {
	w.deadline(time.Now().Add(authTimeout))
	defer w.deadline(time.Time{})
	h, err := newHello()
	if err != nil {
		return h, nil, err
	}
	if _, err := conn.Write(h[:]); err != nil {
		return h, nil, &authError{report.AuthClosed, fmt.Sprintf("hello not sent: %v", err)}
	}
	var b [AuthLen]byte
	if err := readAuth(conn, b[:]); err != nil {
		return h, nil, err
	}
	id, err := authID(b[:])
	if err != nil {
		return h, nil, err
	}
	tk, err := g.terms.lookup(id)
	if err == nil {
		err = checkAuth(tk.Key, h, b[:])
	}
	if err != nil {
		return h, &TerminalKey{ID: id}, err // the id, to count the refusal under
	}
	wl := welcome(tk.Key, h, b[:])
	if _, err := conn.Write(wl[:]); err != nil {
		return h, tk, &authError{report.AuthClosed, fmt.Sprintf("welcome not sent: %v", err)}
	}
	return h, tk, nil
}

// readAuth reads a whole auth message into b, refusing at once what cannot
// begin one.
func readAuth(conn *net.TCPConn, b []byte) error {
	n := 0
	for n < len(b) {
		m, err := conn.Read(b[n:])
		n += m
		if !hasPrefix(b[:n], authMagic[:]) {
			return &authError{report.AuthGarbage, "not an auth message"}
		}
		switch {
		case err == nil:
		case sockopt.IsTimeout(err):
			return &authError{report.AuthDeadline, fmt.Sprintf("%d of %d auth bytes within %v", n, len(b), authTimeout)}
		case n == 0:
			return &authError{report.AuthClosed, fmt.Sprintf("%v before any auth byte (a terminal of warm-path version 1 closes so after the hello: upgrade both ends)", err)}
		default:
			return &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d auth bytes, then %v", n, len(b), err)}
		}
	}
	return nil
}

// watch cuts a held connection's reads and writes once the daemon stops
// (ctx or the gateway's own stop); a deadline set after the cut does not
// undo it.
type watch struct {
	conn    *net.TCPConn
	mu      sync.Mutex
	cut     bool
	revoked bool // cut because its terminal's key was revoked or changed
	stops   [2]func() bool
}

func watchConn(ctx, stopped context.Context, conn *net.TCPConn) *watch {
	w := &watch{conn: conn}
	cut := func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.cut = true
		_ = conn.SetDeadline(time.Now())
	}
	w.stops = [2]func() bool{context.AfterFunc(ctx, cut), context.AfterFunc(stopped, cut)}
	return w
}

// stop ends the watch: the flow's setup has its own.
func (w *watch) stop() {
	w.stops[0]()
	w.stops[1]()
}

// revoke cuts the connection: its terminal's key is no longer in force.
func (w *watch) revoke() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut, w.revoked = true, true
	_ = w.conn.SetDeadline(time.Now())
}

func (w *watch) wasRevoked() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.revoked
}

func (w *watch) wasCut() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cut
}

// deadline sets the read and write deadline, unless the watch cut it.
func (w *watch) deadline(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.cut {
		_ = w.conn.SetDeadline(t)
	}
}

// readDeadline sets the read deadline, unless the watch cut it.
func (w *watch) readDeadline(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.cut {
		_ = w.conn.SetReadDeadline(t)
	}
}

// readHeader waits for the header of a pooled connection and reads it: the
// first byte may take up to idleLimit (the connection waits in a terminal's
// pool), the rest at most headerTimeout. The wait holds a buffer of one
// header, no more (a gateway holds thousands of pooled connections). It then
// reads on without waiting until a read comes back short, so that no skb is
// left half read (see proxy.ReadQueued); drained is false when it stopped at
// the bound instead.
func readHeader(conn *net.TCPConn, w *watch) (data []byte, drained bool, err error) {
	const bound = 1 << 20
	var buf [HeaderLen]byte
	w.readDeadline(time.Now().Add(idleLimit))
	defer conn.SetReadDeadline(time.Time{})
	n := 0
	for n < HeaderLen {
		m, rerr := conn.Read(buf[n:])
		if m > 0 && n == 0 {
			w.readDeadline(time.Now().Add(headerTimeout))
		}
		n += m
		if !hasPrefix(buf[:n], headerMagic[:]) {
			return buf[:n], true, &authError{report.AuthGarbage, "bad magic"}
		}
		if rerr != nil {
			if n > 0 && (sockopt.IsTimeout(rerr) || errors.Is(rerr, io.EOF)) {
				return buf[:n], true, &authError{report.AuthIncomplete, fmt.Sprintf("%d of %d header bytes, then %v", n, HeaderLen, rerr)}
			}
			return buf[:n], true, rerr
		}
	}
	// The header filled the buffer: the client's first bytes may be queued
	// behind it, in the same skb or more. Read them without waiting.
	return proxy.ReadQueued(conn, append(make([]byte, 0, 2*HeaderLen), buf[:]...), bound)
}

// hasPrefix tells whether b and magic agree as far as both go.
func hasPrefix(b, magic []byte) bool {
	n := min(len(b), len(magic))
	return string(b[:n]) == string(magic[:n])
}
