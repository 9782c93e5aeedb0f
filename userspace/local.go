package userspace

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// LocalFailed is the outcome of a connection that could not be split for
// want of a resource of this host (fds, memory, ports), not because of the
// server. Table.Remove counts it once table.go has its case; until then the
// splitter counts it in splitStats.
const LocalFailed Outcome = LoopRefused + 1

// localErrnos are the errors that say this host ran short of something.
var localErrnos = []unix.Errno{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EADDRNOTAVAIL}

// IsLocalFailure tells whether err says this host ran out of a resource
// (file descriptors, socket buffers, memory, local ports) rather than that
// the server refused, was unreachable or did not answer.
func IsLocalFailure(err error) bool {
	for _, e := range localErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// SplitStats are the splitter's totals that the connection table does not
// keep (yet): a process runs one daemon, so they are process-wide, like the
// connect observer.
type SplitStats struct {
	// LocalFailed counts connections reset because accept's follow-up or the
	// upstream dial ran out of a local resource.
	LocalFailed uint64 `json:"local_failed"`
	// UpstreamTuningSkipped counts upstream sockets dialed without their
	// sock_ops tuning because pepsal_upstream could not take them (full).
	UpstreamTuningSkipped uint64 `json:"upstream_tuning_skipped"`
}

var splitStats struct{ localFailed, tuningSkipped atomic.Uint64 }

func readSplitStats() SplitStats {
	return SplitStats{LocalFailed: splitStats.localFailed.Load(), UpstreamTuningSkipped: splitStats.tuningSkipped.Load()}
}

// rateLog lets one line through per period and says how many it held back:
// a storm (thousands of clients while fds run out) must not become a storm
// of log lines.
type rateLog struct {
	period time.Duration
	mu     sync.Mutex
	next   time.Time
	held   int
}

// log writes the line if the period since the last one is over.
func (r *rateLog) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Before(r.next) {
		r.held++
		r.mu.Unlock()
		return
	}
	held := r.held
	r.held, r.next = 0, now.Add(r.period)
	r.mu.Unlock()
	if held > 0 {
		args = append(args, "similar_lines_held_back", held)
	}
	l.Log(context.Background(), level, msg, args...)
}

// onLocalExhaustion is called when accept or an upstream dial fails for want
// of a local resource; the admission logic can hook OnExhausted to stop
// diverting new connections meanwhile.
func (s *Splitter) onLocalExhaustion(err error) {
	if !IsLocalFailure(err) {
		return
	}
	// Out of fds or memory: new SYNs go unsplit at once (admission).
	if s.Table != nil {
		s.Table.ResourceShortage(err)
	}
	if f := s.OnExhausted; f != nil {
		f()
	}
}
