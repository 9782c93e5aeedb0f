// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"golang.org/x/sys/unix"
)

// The listeners' backlog: it bounds both the SYN queue (half-open
// connections: at a satellite round trip, a burst of new ones waits there)
// and the accept queue (the connections accepted after the limit trips,
// whose SYNs were diverted before: counted in the fd budget). It follows the
// admission limit: an eighth of it (a burst of new connections within a
// round trip; more would cost the fd budget, which reserves a whole queue
// per listener), within this range; the kernel caps it at
// net.core.somaxconn. A SYN past a full SYN queue is answered with a SYN
// cookie (the classifier steers its ACK to the listener), which keeps the
// window scale only if the client sends timestamps (Windows does not by
// default): hence the floor. Past a full accept queue a SYN is dropped and
// the client's retransmission meets the classifier again.
const (
	MinListenBacklog = 512
	MaxListenBacklog = 65535
)

// ListenBacklog is the backlog pepsal asks for its listeners under a limit
// of maxConns connections.
func ListenBacklog(maxConns int) int {
	return min(max(maxConns/8, MinListenBacklog), MaxListenBacklog)
}

// Parts of the fd budget besides the connections' two sockets.
const (
	// fdReserve covers what the daemon opens after the check: BPF map and
	// program fds (~20), the Go runtime's (epoll, eventfd), control socket
	// and metrics clients, /proc reads.
	fdReserve = 64
)

// FDBudget is the file-descriptor arithmetic of a daemon.
type FDBudget struct {
	Limit     uint64 // RLIMIT_NOFILE (soft, once raised to the hard limit)
	Open      int    // fds already open when the budget is made
	Listeners int    // proxy listeners (IPv4, IPv6)
	Backlog   int    // accept queue length of each (For sets it for a limit)
	// BacklogCap is the longest accept queue the kernel gives a listener
	// (MaxListenBacklog, or net.core.somaxconn if lower), or that a tight
	// fd limit leaves room for (TightFDs); 0: Backlog is fixed whatever
	// the limit.
	BacklogCap int
	// TightFDs says that the fd limit, not the kernel, shortened the
	// accept queues below MinListenBacklog (a container's 1024, say).
	TightFDs bool
	PeerPort bool // a warm-path gateway: it holds terminals' connections too (PeerWaiting)
}

// Under a tight fd limit the accept queues get at most a quarter of the
// free fds (two per queued connection), and no less than minTightBacklog:
// a daemon that holds a few hundred connections is better than none.
const minTightBacklog = 16

// backlogForFDs is the longest accept queue that a limit of limit fds,
// open of them already open, leaves room for on each of listeners.
func backlogForFDs(limit uint64, open, listeners int) int {
	free := int(min(limit, 1<<30)) - open - fdReserve
	return max(minTightBacklog, free/4/(2*max(listeners, 1)))
}

// For is b with the backlog of a limit of maxConns connections: what the
// listeners ask (ListenBacklog), as far as BacklogCap lets it.
func (b FDBudget) For(maxConns int) FDBudget {
	if b.BacklogCap > 0 {
		b.Backlog = min(ListenBacklog(maxConns), b.BacklogCap)
	}
	return b
}

// Bounds of PeerWaiting.
const (
	minPeerWaiting = 256
	maxPeerWaiting = 4096
)

// PeerWaiting is how many connections a gateway's peer port may hold
// before their flows start (authenticating, or idle in a terminal's pool)
// under a limit of n connections: a quarter of n, at least
// minPeerWaiting, at most maxPeerWaiting; 0 without a peer port. Each is
// budgeted two fds, like a queued accept: its own, and its server leg's
// once its flow starts (when the limit trips, pooled connections still
// take their flows, as queued accepts are still split).
func (b FDBudget) PeerWaiting(n int) int {
	if !b.PeerPort {
		return 0
	}
	return min(max(n/4, minPeerWaiting), maxPeerWaiting)
}

// Need is how many fds n connections may hold at once: two sockets each,
// the connections already in the accept queues when the limit trips (two
// each once accepted), a gateway's peer connections (PeerWaiting, two
// each), splice pipes (held only while bytes move, and bounded:
// relay.PipeLimit), what is open now and a reserve.
func (b FDBudget) Need(n int) uint64 {
	return uint64(2*b.Capacity(n) + b.peerFDs(n) + b.pipeFDs(n) + b.otherFDs())
}

// pipeFDs is the part of Need that splice pipes take.
func (b FDBudget) pipeFDs(n int) int { return 2 * relay.PipeLimit(n) }

// otherFDs is the part of Need that is open already or reserved.
func (b FDBudget) otherFDs() int { return b.Open + fdReserve }

// peerFDs is the part of Need that a gateway's peer connections take.
func (b FDBudget) peerFDs(n int) int { return 2 * b.PeerWaiting(n) }

// MaxConns is the largest connection count the fd limit holds (0: none).
func (b FDBudget) MaxConns() int {
	lo, hi := 0, 1<<26
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if b.For(mid).Need(mid) <= b.Limit {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// Capacity is how many connections may be in the table at once: the limit
// plus those accepted from the queues after it tripped (the BPF maps must
// hold them all).
func (b FDBudget) Capacity(maxConns int) int {
	return maxConns + b.Listeners*(b.Backlog+1)
}

// fitting is the largest limit, up to upTo, whose connections and accept
// queues (shorter for a lower limit) fit maps of capacity connections; 0
// if none does.
func (b FDBudget) fitting(capacity, upTo int) int {
	lo, hi := 0, upTo
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if b.For(mid).Capacity(mid) <= capacity {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// NewFDBudget raises this process's RLIMIT_NOFILE soft limit to its hard
// limit (as far as it may go without privileges it lacks) and returns the
// budget for listeners accept queues, and a gateway's peer port (peerPort).
func NewFDBudget(listeners int, peerPort bool) (FDBudget, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return FDBudget{}, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if rl.Cur < rl.Max {
		raised := unix.Rlimit{Cur: rl.Max, Max: rl.Max}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			rl = raised
		}
	}
	b := FDBudget{Limit: rl.Cur, Listeners: listeners, BacklogCap: MaxListenBacklog, PeerPort: peerPort}
	if s, err := sockopt.ReadSysctl("net/core/somaxconn"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 && n < b.BacklogCap {
			b.BacklogCap = n
		}
	}
	b.Open = sockopt.OpenFDs()
	if fit := backlogForFDs(b.Limit, b.Open, listeners); fit < b.BacklogCap && fit < MinListenBacklog {
		b.BacklogCap, b.TightFDs = fit, true
	}
	b.Backlog = b.BacklogCap // until For settles it for a limit
	return b, nil
}

// memPerConn is the memory a connection is budgeted: an idle one costs about
// 24 KB (daemon and kernel), the rest is room for those that move data.
const memPerConn = 64 << 10

// MemMaxConns is how many connections half of the host's memory holds at
// memPerConn each (0 when /proc/meminfo cannot be read).
func MemMaxConns() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return int(kb << 10 / 2 / memPerConn)
		}
	}
	return 0
}
