// SPDX-License-Identifier: Apache-2.0

// Package logx holds the logging helpers of the daemon's loops: a
// rate-limited line (RateLog), the pacing of an accept loop through errors
// (AcceptBackoff) and a logger that tags a connection's lines (ConnLogger).
//
// Each value keeps only its own state (a RateLog's period, an
// AcceptBackoff's streak); the package has no package-level state and
// imports no pepsal package. Being internal, only pepsal's userspace uses it.
package logx

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// RateLog lets one line through per Period and says how many it held back:
// a storm (thousands of clients while fds run out) must not become a storm
// of log lines. Its zero value lets every line through.
type RateLog struct {
	Period time.Duration
	mu     sync.Mutex
	next   time.Time
	held   int
}

// Log writes the line if the period since the last one is over.
func (r *RateLog) Log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Before(r.next) {
		r.held++
		r.mu.Unlock()
		return
	}
	held := r.held
	r.held, r.next = 0, now.Add(r.Period)
	r.mu.Unlock()
	if held > 0 {
		args = append(args, "similar_lines_held_back", held)
	}
	l.Log(context.Background(), level, msg, args...)
}

// AcceptBackoff paces an accept loop through errors that pass (EMFILE,
// ENFILE, ENOBUFS, ENOMEM, an aborted handshake): it retries after a pause
// that doubles up to a second rather than spinning or giving up, and logs
// once per streak of failures rather than once per try. One loop owns it.
type AcceptBackoff struct {
	Log   *slog.Logger
	What  string // the listener, first word of the log lines
	delay time.Duration
	fails int
}

// Failed records a failed accept and sleeps before the next try.
func (b *AcceptBackoff) Failed(err error) {
	if b.fails == 0 {
		b.Log.Warn(b.What+" accept failing, retrying", "err", err)
	}
	b.fails++
	b.delay = min(max(2*b.delay, 5*time.Millisecond), time.Second)
	time.Sleep(b.delay)
}

// OK records a successful accept and ends a streak of failures.
func (b *AcceptBackoff) OK() {
	if b.fails > 0 {
		b.Log.Info(b.What+" accept recovered", "failed_tries", b.fails)
		b.fails, b.delay = 0, 0
	}
}

// ConnLogger logs with a connection's identity: its id, then its client
// and server unless Brief.
type ConnLogger struct {
	Log            *slog.Logger
	ID             uint64
	Client, Server netip.AddrPort
	// Brief: the id alone (a warm flow's lines name its addresses only
	// where they say something).
	Brief bool
}

// At writes a line at level.
func (cl ConnLogger) At(level slog.Level, msg string, args ...any) {
	if !cl.Log.Enabled(context.Background(), level) {
		return
	}
	id := []any{"conn", cl.ID}
	if !cl.Brief {
		id = append(id, "client", cl.Client, "server", cl.Server)
	}
	cl.Log.Log(context.Background(), level, msg, append(id, args...)...)
}

func (cl ConnLogger) Debug(msg string, args ...any) { cl.At(slog.LevelDebug, msg, args...) }
func (cl ConnLogger) Info(msg string, args ...any)  { cl.At(slog.LevelInfo, msg, args...) }
func (cl ConnLogger) Warn(msg string, args ...any)  { cl.At(slog.LevelWarn, msg, args...) }
