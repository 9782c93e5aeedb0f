// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pepsal/pepsal/tests/testbed"
)

// The wire protocol of the traffic server: the client sends a 9-byte request,
// an operation and a big-endian size.
const (
	opDownload = 'D' // server sends size bytes, then closes
	opUpload   = 'U' // client sends size bytes; server answers with the 8-byte count it read
	opEcho     = 'E' // server echoes messages of size bytes until EOF
	hdrLen     = 9

	ioChunk    = 256 << 10
	maxEchoMsg = 64 << 10
	// Unbounded is a download size no test reaches: read it for a while, then hang up.
	Unbounded = math.MaxInt64 / 2
)

var zeros = make([]byte, ioChunk)

// Server serves downloads, uploads and echoes. Its sockets use one
// congestion control (TCP_CONGESTION), like a server on the Internet does,
// whatever the namespace's default is.
type Server struct {
	Addr string // host:port to dial
	cc   string
	ln   net.Listener
	sent atomic.Int64 // payload bytes written by downloads

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartServer listens on addr inside ns; cc is a congestion control name, or
// "" for the namespace default.
func StartServer(ns *testbed.NS, addr, cc string) (*Server, error) {
	s := &Server{cc: cc, conns: map[net.Conn]struct{}{}}
	err := ns.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error { return setCC(rc, cc) }}
		// Plain TCP: Go would otherwise listen with MPTCP where the kernel has it.
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		s.ln = ln
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("traffic server on %s in %s: %w", addr, ns.Name, err)
	}
	s.Addr = s.ln.Addr().String()
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Sent is the payload written by downloads so far (all connections).
func (s *Server) Sent() int64 { return s.sent.Load() }

// Close stops listening, aborts live connections and waits for their handlers.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c.(*net.TCPConn))
		}()
	}
}

func (s *Server) serve(c *net.TCPConn) {
	// Accepted sockets inherit the listener's congestion control; setting it
	// again costs nothing and does not depend on that kernel detail.
	if rc, err := c.SyscallConn(); err == nil {
		_ = setCC(rc, s.cc)
	}
	var hdr [hdrLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	size := int64(binary.BigEndian.Uint64(hdr[1:]))
	switch hdr[0] {
	case opDownload:
		for left := size; left > 0; {
			n, err := c.Write(zeros[:min(left, ioChunk)])
			s.sent.Add(int64(n))
			left -= int64(n)
			if err != nil {
				return
			}
		}
	case opUpload:
		got, _ := discard(c, size)
		var ack [8]byte
		binary.BigEndian.PutUint64(ack[:], uint64(got))
		_, _ = c.Write(ack[:])
	case opEcho:
		if size <= 0 || size > maxEchoMsg {
			return
		}
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// discard reads up to size bytes and counts them.
func discard(r io.Reader, size int64) (int64, error) {
	buf := make([]byte, ioChunk)
	var got int64
	for got < size {
		n, err := r.Read(buf[:min(size-got, ioChunk)])
		got += int64(n)
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

func setCC(rc syscall.RawConn, cc string) error {
	if cc == "" {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("TCP_CONGESTION %s: %w", cc, serr)
	}
	return nil
}

// Result of one transfer. Times count from the start of connect().
type Result struct {
	Bytes     int64         // received (download) or acknowledged by the server (upload)
	Total     time.Duration // until the last byte (download) or the server's acknowledgement (upload)
	FirstByte time.Duration // until the first byte of the server's answer
}

// dial connects from inside ns with the namespace's default TCP settings (a
// client keeps Linux defaults). It returns the time connect() started. The
// connection's deadline follows ctx.
func dial(ctx context.Context, ns *testbed.NS, addr string) (*net.TCPConn, time.Time, func(), error) {
	var (
		c     net.Conn
		start time.Time
	)
	err := ns.Do(func() (err error) {
		var d net.Dialer
		d.SetMultipathTCP(false)
		start = time.Now()
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, start, nil, ctxErr(ctx, fmt.Errorf("connect %s: %w", addr, err))
	}
	// Only through the context, so that a socket timeout always comes with
	// ctx.Err() set and ctxErr can name it.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return c.(*net.TCPConn), start, func() { stop(); c.Close() }, nil
}

// ctxErr prefers the context's reason (timeout, cancel) over the socket
// error it caused, so that callers can tell a slow transfer from a broken one.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}

func request(c net.Conn, op byte, size int64) error {
	var hdr [hdrLen]byte
	hdr[0] = op
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	_, err := c.Write(hdr[:])
	return err
}

// ErrShort is a transfer that ended with fewer (or more) bytes than asked.
var ErrShort = errors.New("wrong byte count")

// Download asks for size bytes and reads them all.
func Download(ctx context.Context, ns *testbed.NS, addr string, size int64) (Result, error) {
	var r Result
	c, start, done, err := dial(ctx, ns, addr)
	if err != nil {
		return r, err
	}
	defer done()
	if err := request(c, opDownload, size); err != nil {
		return r, ctxErr(ctx, fmt.Errorf("request: %w", err))
	}
	buf := make([]byte, ioChunk)
	for {
		n, err := c.Read(buf)
		if n > 0 && r.Bytes == 0 {
			r.FirstByte = time.Since(start)
		}
		r.Bytes += int64(n)
		if n > 0 && r.Bytes >= size && r.Total == 0 {
			r.Total = time.Since(start)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return r, ctxErr(ctx, fmt.Errorf("after %d of %d bytes: %w", r.Bytes, size, err))
		}
	}
	if r.Bytes != size {
		return r, fmt.Errorf("%w: downloaded %d of %d bytes", ErrShort, r.Bytes, size)
	}
	return r, nil
}

// Upload sends size bytes and waits for the server to confirm it read them all.
func Upload(ctx context.Context, ns *testbed.NS, addr string, size int64) (Result, error) {
	var r Result
	c, start, done, err := dial(ctx, ns, addr)
	if err != nil {
		return r, err
	}
	defer done()
	if err := request(c, opUpload, size); err != nil {
		return r, ctxErr(ctx, fmt.Errorf("request: %w", err))
	}
	for left := size; left > 0; {
		n, err := c.Write(zeros[:min(left, ioChunk)])
		left -= int64(n)
		if err != nil {
			return r, ctxErr(ctx, fmt.Errorf("after %d of %d bytes: %w", size-left, size, err))
		}
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return r, ctxErr(ctx, fmt.Errorf("waiting for the server's count: %w", err))
	}
	r.Total = time.Since(start)
	r.FirstByte = r.Total
	r.Bytes = int64(binary.BigEndian.Uint64(ack[:]))
	if r.Bytes != size {
		return r, fmt.Errorf("%w: server got %d of %d bytes", ErrShort, r.Bytes, size)
	}
	return r, nil
}

// Stream downloads over n parallel connections for d and returns the payload
// bytes received and the time it took (connects included).
func Stream(ctx context.Context, ns *testbed.NS, addr string, n int, d time.Duration) (int64, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		total atomic.Int64
		wg    sync.WaitGroup
		errs  = make([]error, n)
	)
	start := time.Now()
	end := start.Add(d)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, done, err := dial(ctx, ns, addr)
			if err != nil {
				errs[i] = err
				return
			}
			defer done()
			_ = c.SetReadDeadline(end)
			if err := request(c, opDownload, Unbounded); err != nil {
				errs[i] = err
				return
			}
			buf := make([]byte, ioChunk)
			for {
				k, err := c.Read(buf)
				total.Add(int64(k))
				if err != nil {
					if !errors.Is(err, syscall.ETIMEDOUT) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
						errs[i] = err
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return total.Load(), elapsed, err
	}
	return total.Load(), elapsed, errors.Join(errs...)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// EchoLatency sends count messages of size bytes one at a time on one
// connection and returns each round trip, after a few warm-up exchanges.
func EchoLatency(ctx context.Context, ns *testbed.NS, addr string, size, count int) ([]time.Duration, error) {
	const warmup = 20
	if size <= 0 || size > maxEchoMsg {
		return nil, fmt.Errorf("echo message size %d not in 1..%d", size, maxEchoMsg)
	}
	c, _, done, err := dial(ctx, ns, addr)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := request(c, opEcho, int64(size)); err != nil {
		return nil, ctxErr(ctx, err)
	}
	msg := make([]byte, size)
	back := make([]byte, size)
	rtts := make([]time.Duration, 0, count)
	for i := range count + warmup {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return rtts, ctxErr(ctx, fmt.Errorf("echo write: %w", err))
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return rtts, ctxErr(ctx, fmt.Errorf("echo read: %w", err))
		}
		if i >= warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	return rtts, nil
}
