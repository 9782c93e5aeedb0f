package daemon

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
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

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

// ServeControl answers "info" and "conns" requests until the listener closes.
// Any other accept error (a shortage of fds or memory passes) is waited out:
// a health check built on `pepsal status` must not condemn a daemon that
// once ran out of fds.
func ServeControl(ln net.Listener, info func() report.DaemonInfo, table *proxy.Table, log *slog.Logger) {
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
				fillRuntime(&i)
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
	ln, err := net.Listen("unix", report.ControlAddr)
	if err != nil {
		return nil, fmt.Errorf("another pepsal daemon is serving in this network namespace (control socket %s: %w)", report.ControlAddr, err)
	}
	return ln, nil
}
