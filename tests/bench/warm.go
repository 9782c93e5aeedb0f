// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/testbed"
)

// The two-PEP beds run pepsal as README's headline measures it: the role
// presets, the gateway taking data in SYNs from the terminal's link only,
// and warm paths (the terminal keeps a pool of connections open to the
// gateway) under a pre-shared key that the bench makes for the run.

// peerAddr is where the two-PEP gateway takes its terminal's warm connections.
var peerAddr = net.JoinHostPort(testbed.GatewayLinkV4, "7700")

// twoPEPRoles is --role for a site of the two-PEP bed and, for the gateway,
// fast open from the terminal's link addresses: the terminal dials with the
// request in its SYN when no warm connection is idle, and a SYN with data
// from anywhere else is forwarded unsplit.
func twoPEPRoles(site string) []string {
	a := []string{"--role", site}
	if site == "gateway" {
		a = append(a, "--fastopen-from", testbed.TerminalLinkV4, "--fastopen-from", testbed.TerminalLinkV6)
	}
	return a
}

// warmArgs are the warm-path flags of a two-PEP site, none without a key.
func (c Config) warmArgs(site string) []string {
	if c.PeerKey == "" {
		return nil
	}
	switch site {
	case "gateway":
		return []string{"--peer-listen", peerAddr, "--peer-key", c.PeerKey}
	case "terminal":
		return []string{"--peer", peerAddr, "--peer-key", c.PeerKey}
	}
	return nil
}

// hasWarmPaths tells whether a terminal's arguments ask for warm paths: the
// rows that have them say so in their name.
func hasWarmPaths(terminalArgs []string) bool {
	for _, a := range terminalArgs {
		if a == "--peer" || strings.HasPrefix(a, "--peer=") {
			return true
		}
	}
	return false
}

// warmLabel is appended to the name of a two-PEP row with warm paths.
const warmLabel = ", warm paths"

// modes are the spec's rows, named: a two-PEP row whose terminal runs warm
// paths says so.
func (s Spec) modes(cfg Config) []Mode {
	ms := s.Modes
	if ms == nil {
		ms = cfg.Modes()
	}
	warm := s.Topo == TwoPEP && hasWarmPaths(cfg.argsFor("terminal"))
	out := make([]Mode, len(ms))
	for i, m := range ms {
		if warm && m.Relay != "" {
			m.Name += warmLabel
		}
		out[i] = m
	}
	return out
}

// webTwoArgs are the arguments of the two-PEP row's pepsal at site: its role
// (and the gateway's fast open from the terminal), then the variables'
// arguments if set, else the warm paths.
func (c Config) webTwoArgs(site string) []string {
	a := twoPEPRoles(site)
	if o, ok := c.override(site); ok {
		return append(a, o...)
	}
	return append(a, c.warmArgs(site)...)
}

// keyBytes is the size of the random key; LoadKeys wants at least 32 bytes.
const keyBytes = 32

// MakePeerKey writes a fresh random key for the warm paths into a new
// private directory and points c.PeerKey at it; remove deletes both. With
// c.WarmPaths false it does nothing. The key is hex text on one line without
// a newline: a plain single-key file that pepsal's LoadKeys takes.
func (c *Config) MakePeerKey() (remove func(), err error) {
	if !c.WarmPaths {
		return func() {}, nil
	}
	dir, err := os.MkdirTemp("", "pepsal-bench-key-")
	if err != nil {
		return nil, fmt.Errorf("peer key: %w", err)
	}
	remove = func() { os.RemoveAll(dir) }
	path := filepath.Join(dir, "peer.key")
	if err := writeKey(path); err != nil {
		remove()
		return nil, err
	}
	c.PeerKey = path
	return remove, nil
}

func writeKey(path string) error {
	raw := make([]byte, keyBytes)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("peer key: %w", err)
	}
	// 0600 at creation: the daemons refuse a key that others may read.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("peer key: %w", err)
	}
	_, err = f.WriteString(hex.EncodeToString(raw))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("peer key %s: %w", path, err)
	}
	return nil
}

// describeArgs shows arguments in a report, the key's temporary path as KEY.
func (c Config) describeArgs(args []string) string {
	if c.PeerKey == "" {
		return orNone(args)
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, c.PeerKey, "KEY")
	}
	return orNone(out)
}

// waitWarm waits until the pool of warm connections of every terminal among
// ds is full: a transfer that starts before would measure the pool's start
// (and ride fast open), not a warm path. A pool still short after
// harness.StartTimeout is an error with the terminal's last dial error.
func waitWarm(ctx context.Context, ds []*Daemon) error {
	for _, d := range ds {
		if d.ref {
			continue
		}
		var last string
		full := func() bool {
			st, err := d.Status()
			if err != nil {
				last = err.Error()
				return false
			}
			if st.Daemon == nil || st.Daemon.Peer == nil || st.Daemon.Peer.Pool == nil {
				return true // not a terminal with warm paths: nothing to wait for
			}
			p := st.Daemon.Peer.Pool
			last = fmt.Sprintf("%d of %d warm connections idle", p.Idle, p.Size)
			if p.LastError != "" {
				last += ", last error: " + p.LastError
			}
			return p.Idle >= p.Size
		}
		err := d.WaitReady(ctx, harness.StartTimeout, full)
		switch {
		case errors.Is(err, harness.ErrNotReady):
			return fmt.Errorf("%s: warm paths not ready after %s: %s", d.Site.Name, harness.StartTimeout, last)
		case err != nil:
			return fmt.Errorf("%s: %w", d.Site.Name, err)
		}
	}
	return nil
}
