package userspace

import (
	"errors"
	"io"
	"net"
	"sync"
)

// spliceRelay moves bytes both ways with io.Copy between two *net.TCPConn,
// which Linux does with splice(2), keeping TCP semantics end to end:
//   - EOF from one side becomes shutdown(SHUT_WR) on the other, after every
//     byte read before it has been written; the other direction keeps flowing;
//   - an error on either side (a reset, a write to a closed peer) resets both.
//
// It returns once both directions are finished and both sockets are closed.
func spliceRelay(c *Conn, client, server *net.TCPConn) Outcome {
	var abortOnce sync.Once
	aborted := false
	abort := func() {
		abortOnce.Do(func() {
			aborted = true
			resetConn(client)
			resetConn(server)
		})
	}
	pipe := func(dst, src *net.TCPConn, count func(int64), done func()) {
		n, err := io.Copy(dst, src)
		count(n)
		if err != nil {
			abort()
			return
		}
		done()
		if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			abort()
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pipe(server, client, func(n int64) { c.add(n, 0) }, func() { c.clientDone.Store(true); c.SetState(c.halfState()) })
	}()
	go func() {
		defer wg.Done()
		pipe(client, server, func(n int64) { c.add(0, n) }, func() { c.serverDone.Store(true); c.SetState(c.halfState()) })
	}()
	wg.Wait()
	client.Close()
	server.Close()
	if aborted {
		return WasReset
	}
	return Completed
}

func (c *Conn) halfState() string {
	switch {
	case c.clientDone.Load() && c.serverDone.Load():
		return "closing"
	case c.clientDone.Load():
		return "client-half-closed"
	default:
		return "server-half-closed"
	}
}

// resetConn closes with SO_LINGER 0, which sends an RST and drops unsent data:
// the right answer when the other leg was reset.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}
