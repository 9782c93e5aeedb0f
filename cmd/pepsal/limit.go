// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/spf13/pflag"
)

func registerMaxConns(fl *pflag.FlagSet, v *string) {
	fl.StringVar(v, "max-conns", "auto", "split connections held at most; past it new connections are forwarded unsplit until 10% below (auto: what the fd limit and half the memory hold); the listeners' backlog is an eighth of it, 512 to 65535, capped by net.core.somaxconn")
}

func registerMaxConnsPerClient(fl *pflag.FlagSet, v *string) {
	fl.StringVar(v, "max-conns-per-client", "auto", "split connections one client address holds at most; past it its new connections are forwarded unsplit until 10% below, so one client cannot take the proxy from the others (auto: a quarter of --max-conns, at least 256; off: no limit)")
}

// parsePerClient reads --max-conns-per-client: a positive count, -1 for
// "auto" (settled once --max-conns is), or 0 for "off".
func parsePerClient(s string) (int, error) {
	switch s = strings.TrimSpace(s); s {
	case "auto":
		return -1, nil
	case "off", "0":
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > loader.MaxMapConns {
		return 0, fmt.Errorf("bad --max-conns-per-client %q: want a count of connections from 1 to %d, auto or off", s, loader.MaxMapConns)
	}
	return n, nil
}

// perClientLimit settles --max-conns-per-client (asked as parsePerClient
// reads it) against the connection limit: auto derives it; a count at or
// past the limit would never act before it, and is kept as asked.
func perClientLimit(asked, maxConns int) int {
	if asked < 0 {
		return proxy.DefaultPerClient(maxConns)
	}
	return asked
}

// parseMaxConns reads --max-conns: a positive count, or 0 for "auto".
func parseMaxConns(s string) (int, error) {
	if s == "auto" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > loader.MaxMapConns {
		return 0, fmt.Errorf("bad --max-conns %q: want a count of connections from 1 to %d, or auto", s, loader.MaxMapConns)
	}
	return n, nil
}

// settleLimit raises RLIMIT_NOFILE and settles the connection limit of
// --max-conns (asked; 0: auto) against the host (proxy.SettleLimit).
func settleLimit(asked int, log *slog.Logger) (proxy.Limit, error) {
	l, err := proxy.SettleLimit(asked, log)
	return l, limitErr(err)
}

// limitErr says the admission policy's shortfalls with --max-conns and the
// commands that help, in the words the CLI always used.
func limitErr(err error) error {
	var fds *proxy.FDShortError
	var maps *proxy.MapsShortError
	switch {
	case errors.As(err, &fds):
		return fmt.Errorf("--max-conns %d %s: lower --max-conns to %d or raise the limit (systemd LimitNOFILE=)", fds.Asked, fds.Shortfall(), fds.Fits)
	case errors.As(err, &maps) && maps.Asked > 0:
		return fmt.Errorf("--max-conns %d: the existing attachment's maps hold %d connections (including %d in accept queues): `pepsal detach` and attach again with --max-conns, or lower it",
			maps.Asked, maps.Capacity, maps.Queued)
	case errors.As(err, &maps):
		return fmt.Errorf("the existing attachment's maps hold %d connections, no more than the accept queues (%d): `pepsal detach` and attach again", maps.Capacity, maps.Queued)
	}
	return err
}

// limitFrom says what set the limit, for the daemon's log: the flag, when
// it was asked.
func limitFrom(l proxy.Limit) string {
	if l.From == proxy.FromAsked {
		return "--max-conns"
	}
	return string(l.From)
}
