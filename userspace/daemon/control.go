// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// What one client of the control socket may cost the daemon.
const (
	// ControlLineMax bounds a request line ("info", "conns"); a client
	// that sends more without a newline is dropped, having cost this much.
	ControlLineMax = 4 << 10
	// ControlClients is how many clients are answered at once; more are
	// told the daemon is busy and closed at once.
	ControlClients = 16
	// ControlDeadline is how long a client may take to ask and read its
	// answer before it is dropped and its place given to another.
	ControlDeadline = 5 * time.Second
)

// ControlGroup is the group whose members, besides root (and the daemon's
// own user), may use the control socket (--control-group). The zero value
// lets root alone.
type ControlGroup struct {
	Name string // as the refusal says it
	GID  uint32
	Set  bool
}

// Admits says whether p may ask: root, the daemon's own user, or a member
// of the group (its primary group or a supplementary one).
func (g ControlGroup) Admits(p sockopt.Peer) bool {
	if p.UID == 0 || p.UID == uint32(os.Geteuid()) {
		return true
	}
	return g.Set && (p.GID == g.GID || slices.Contains(p.Groups, g.GID))
}

// refusal is the one line a client refused by Admits reads.
func (g ControlGroup) refusal() string {
	if !g.Set {
		return "permission denied: pepsal's control socket needs root"
	}
	return "permission denied: pepsal's control socket needs root or group " + g.Name
}

// ControlServer answers `pepsal status` ("info") and `pepsal conns`
// ("conns") on the control socket, to root and the members of Group only,
// a bounded request from a bounded number of clients at a time.
type ControlServer struct {
	Info  func() report.DaemonInfo
	Table *proxy.Table
	Group ControlGroup
	Log   *slog.Logger
	// Deadline overrides ControlDeadline (tests); 0: ControlDeadline.
	Deadline time.Duration
	// Peer says who connected; nil: the kernel's record (sockopt.PeerOf).
	Peer func(net.Conn) (sockopt.Peer, error)

	refusedLog logx.RateLog
}

// Serve answers until ln closes. Any other accept error (a shortage of fds
// or memory passes) is waited out: a health check built on `pepsal status`
// must not condemn a daemon that once ran out of fds. Who may not ask, and
// who comes while ControlClients are being answered, gets its one line in
// this loop, without a goroutine: a flood of either holds nothing.
func (s *ControlServer) Serve(ln net.Listener) {
	backoff := logx.AcceptBackoff{Log: s.Log, What: "control"}
	s.refusedLog.Period = 10 * time.Second
	slots := make(chan struct{}, ControlClients)
	var answering sync.WaitGroup
	defer answering.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff.Failed(err)
			continue
		}
		backoff.OK()
		if !s.admit(conn) {
			continue
		}
		select {
		case slots <- struct{}{}:
			answering.Go(func() {
				defer func() { <-slots }()
				s.answer(conn)
			})
		default:
			s.refuse(conn, fmt.Sprintf("busy: %d clients are being answered, try again", ControlClients))
		}
	}
}

// admit checks who connected; a client that may not ask is refused, with
// one line, and closed.
func (s *ControlServer) admit(conn net.Conn) bool {
	p, err := s.peerOf(conn)
	if err != nil {
		s.Log.Warn("control: cannot tell who connected", "err", err)
		conn.Close()
		return false
	}
	if s.Group.Admits(p) {
		return true
	}
	s.refusedLog.Log(s.Log, slog.LevelWarn, "control: refused", "uid", p.UID, "gid", p.GID, "pid", p.PID)
	s.refuse(conn, s.Group.refusal())
	return false
}

// peerOf is who connected: Peer's word, or the kernel's.
func (s *ControlServer) peerOf(conn net.Conn) (sockopt.Peer, error) {
	if s.Peer != nil {
		return s.Peer(conn)
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return sockopt.Peer{}, errors.New("not a unix socket")
	}
	return sockopt.PeerOf(sc)
}

// refuse writes why in one line and closes conn. The socket's buffer is
// empty: the write does not wait, but for a short deadline in case.
func (s *ControlServer) refuse(conn net.Conn, why string) {
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = json.NewEncoder(conn).Encode(report.ControlError{Error: why})
	conn.Close()
}

// answer reads one request, of at most ControlLineMax bytes, and answers it,
// all within the deadline.
func (s *ControlServer) answer(conn net.Conn) {
	defer conn.Close()
	deadline := s.Deadline
	if deadline == 0 {
		deadline = ControlDeadline
	}
	_ = conn.SetDeadline(time.Now().Add(deadline))
	line, err := readRequest(conn)
	if err != nil {
		if errors.Is(err, errRequestTooLong) {
			s.Log.Debug("control: client dropped", "err", err)
		}
		return
	}
	enc := json.NewEncoder(conn)
	switch line {
	case "info":
		i := s.Info()
		fillRuntime(&i)
		_ = enc.Encode(i)
	case "conns":
		_ = enc.Encode(s.Table.Snapshot())
	default:
		_ = enc.Encode(report.ControlError{Error: "unknown request"})
	}
}

var errRequestTooLong = fmt.Errorf("request longer than %d bytes", ControlLineMax)

// readRequest reads one line of at most ControlLineMax bytes: what a
// client sends beyond it is never read, so a flood costs that much.
func readRequest(conn net.Conn) (string, error) {
	r := bufio.NewReaderSize(io.LimitReader(conn, ControlLineMax+1), 512)
	line, err := r.ReadString('\n')
	if err != nil {
		if len(line) > ControlLineMax {
			return "", errRequestTooLong
		}
		return "", fmt.Errorf("read request: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// fillRuntime adds what lets an operator (and the leak tests) see that
// finished connections leave nothing behind.
func fillRuntime(d *report.DaemonInfo) {
	d.Goroutines = runtime.NumGoroutine()
	d.OpenFDs = sockopt.OpenFDs()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		d.HeapBytes = sample[0].Value.Uint64()
	}
}
