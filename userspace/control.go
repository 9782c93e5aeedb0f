package userspace

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"time"

	"github.com/pepsal/pepsal/userspace/internal/logx"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// ControlAddr is the daemon's control socket. Abstract unix sockets belong to
// the network namespace, so `pepsal status` finds the daemon of its own
// namespace and never another's, and the name vanishes with the process.
const ControlAddr = "@pepsal-control"

// DaemonInfo is what the daemon reports about itself.
type DaemonInfo struct {
	PID            int        `json:"pid"`
	Version        string     `json:"version"`
	Relay          string     `json:"relay"`                 // in use
	RelayAsked     string     `json:"relay_asked,omitempty"` // --relay
	Off            []Off      `json:"off,omitempty"`         // what the kernel cannot give
	Listeners      []string   `json:"listeners"`
	ConnectTimeout string     `json:"connect_timeout"`
	UptimeSeconds  float64    `json:"uptime_seconds"`
	Goroutines     int        `json:"goroutines"`
	OpenFDs        int        `json:"open_fds"`
	HeapBytes      uint64     `json:"heap_bytes"` // Go heap objects, live or not yet swept
	Stats          Stats      `json:"stats"`
	Peer           *PeerStats `json:"peer,omitempty"` // warm paths between two pepsals
	SplitStats
}

// Off is a feature pepsal turned off because the kernel cannot give it.
type Off struct {
	Feature string `json:"feature"`
	Why     string `json:"why"`
	Instead string `json:"instead"`
}

func (o Off) String() string { return o.Feature + " off: " + o.Why + "; " + o.Instead }

// fillRuntime adds what lets an operator (and the leak tests) see that
// finished connections leave nothing behind.
func (d *DaemonInfo) fillRuntime() {
	d.Goroutines = runtime.NumGoroutine()
	d.OpenFDs = sockopt.OpenFDs()
	d.SplitStats = readSplitStats()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		d.HeapBytes = sample[0].Value.Uint64()
	}
}

// ServeControl answers "info" and "conns" requests until the listener closes.
// Any other accept error (a shortage of fds or memory passes) is waited out:
// a health check built on `pepsal status` must not condemn a daemon that
// once ran out of fds.
func ServeControl(ln net.Listener, info func() DaemonInfo, table *Table, log *slog.Logger) {
	backoff := logx.AcceptBackoff{Log: log, What: "control"}
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
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				return
			}
			enc := json.NewEncoder(conn)
			switch strings.TrimSpace(line) {
			case "info":
				i := info()
				i.fillRuntime()
				_ = enc.Encode(i)
			case "conns":
				_ = enc.Encode(table.Snapshot())
			default:
				_ = enc.Encode(map[string]string{"error": "unknown request"})
			}
		}()
	}
}

// ListenControl opens the control socket; it fails when a daemon already
// serves in this namespace.
func ListenControl() (net.Listener, error) {
	ln, err := net.Listen("unix", ControlAddr)
	if err != nil {
		return nil, fmt.Errorf("another pepsal daemon is serving in this network namespace (control socket %s: %w)", ControlAddr, err)
	}
	return ln, nil
}

// Query asks the daemon of this namespace; out receives the decoded JSON.
func Query(request string, out any) error {
	conn, err := net.DialTimeout("unix", ControlAddr, 2*time.Second)
	if err != nil {
		return fmt.Errorf("no pepsal daemon in this network namespace: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, request); err != nil {
		return err
	}
	if err := json.NewDecoder(conn).Decode(out); err != nil {
		return fmt.Errorf("read daemon answer: %w", err)
	}
	return nil
}
