package userspace

import (
	"errors"
	"sync/atomic"

	"github.com/pepsal/pepsal/userspace/report"
	"golang.org/x/sys/unix"
)

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

// splitStats are a splitter's totals that its table does not keep
// (report.SplitStats).
type splitStats struct {
	localFailed   atomic.Uint64 // connections reset for want of a local resource (conn.LocalFailed)
	tuningSkipped atomic.Uint64 // server legs dialed without their sock_ops registration
}

func (st *splitStats) read() report.SplitStats {
	return report.SplitStats{LocalFailed: st.localFailed.Load(), UpstreamTuningSkipped: st.tuningSkipped.Load()}
}

// SplitStats reads the splitter's totals that its table does not keep.
func (s *Splitter) SplitStats() report.SplitStats { return s.stats.read() }

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
