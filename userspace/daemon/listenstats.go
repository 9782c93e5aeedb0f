// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// listenStats is the listeners' backlog and the namespace's listen queue
// and SYN cookie counters, read now (the daemon runs in the namespace it
// serves, so /proc/self/net is that namespace's).
func listenStats(backlog int) report.ListenStats {
	s := report.ListenStats{Backlog: backlog}
	ext, err := sockopt.TCPExt()
	if err != nil {
		s.Unreadable = err.Error()
		return s
	}
	s.Overflows, s.Drops = ext["ListenOverflows"], ext["ListenDrops"]
	s.CookiesSent, s.CookiesRecv, s.CookiesFailed = ext["SyncookiesSent"], ext["SyncookiesRecv"], ext["SyncookiesFailed"]
	return s
}
