// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/pepsal/pepsal/userspace/daemon"
	"github.com/pepsal/pepsal/userspace/outage"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/spf13/cobra"
)

// peerFlags configure warm paths between a terminal pepsal (--peer) and a
// gateway pepsal (--peer-listen).
type peerFlags struct {
	listen, gateway, keyFile string
	pool                     int
	allow                    []string
	outageProbe              time.Duration
}

func (p *peerFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.listen, "peer-listen", "", "gateway: accept warm connections from terminal pepsals on ADDR:PORT (firewall it to your terminals)")
	f.StringVar(&p.gateway, "peer", "", "terminal: keep warm connections open to the gateway pepsal at ADDR:PORT")
	f.StringVar(&p.keyFile, "peer-key", "", "file of the warm paths' keys, mode 600: one shared key (at least 32 random bytes), or `ID KEY [clients=PREFIX,...]` lines, one per terminal (a terminal's: its own line); a gateway reads it again when it changes")
	f.IntVar(&p.pool, "peer-pool", peer.DefaultPool, "terminal: idle warm connections kept open to the gateway")
	f.StringArrayVar(&p.allow, "peer-allow", nil, "gateway: accept warm connections only from this prefix (repeatable; default: any, the key still applies)")
	f.DurationVar(&p.outageProbe, "outage-probe", outage.DefaultEvery, "warm paths: while legs toward the other pepsal are stalled by retransmission timeouts, ping it this often; its first answer after 2 s of silence (a link outage) makes them retransmit at once (IPv4; 10ms to 10s, 0: off)")
}

// config checks the flags before anything is opened or attached.
func (p *peerFlags) config(cmd *cobra.Command) (daemon.PeerOptions, error) {
	var s daemon.PeerOptions
	f := cmd.Flags()
	if p.listen == "" && p.gateway == "" {
		for _, name := range []string{"peer-key", "peer-pool", "peer-allow", "outage-probe"} {
			if f.Changed(name) {
				return s, fmt.Errorf("--%s needs --peer (terminal) or --peer-listen (gateway)", name)
			}
		}
		return s, nil
	}
	if p.listen != "" {
		if err := checkPeerAddr(p.listen, true); err != nil {
			return s, fmt.Errorf("bad --peer-listen %q: %w; want ADDR:PORT, e.g. 192.0.2.1:7000", p.listen, err)
		}
		s.Listen = p.listen
	}
	if p.gateway != "" {
		if err := checkPeerAddr(p.gateway, false); err != nil {
			return s, fmt.Errorf("bad --peer %q: %w; want the gateway's ADDR:PORT, e.g. 192.0.2.1:7000", p.gateway, err)
		}
		s.Gateway = p.gateway
	}
	if f.Changed("peer-pool") && p.gateway == "" {
		return s, fmt.Errorf("--peer-pool needs --peer")
	}
	if p.pool < 1 || p.pool > 4096 {
		return s, fmt.Errorf("bad --peer-pool %d: want 1 to 4096", p.pool)
	}
	s.Pool = p.pool
	if p.outageProbe != 0 && (p.outageProbe < 10*time.Millisecond || p.outageProbe > 10*time.Second) {
		return s, fmt.Errorf("bad --outage-probe %s: want 10ms to 10s, or 0 (off)", p.outageProbe)
	}
	s.OutageProbe = p.outageProbe
	if len(p.allow) > 0 && p.listen == "" {
		return s, fmt.Errorf("--peer-allow needs --peer-listen")
	}
	for _, a := range p.allow {
		pfx, err := netip.ParsePrefix(a)
		if err != nil {
			return s, fmt.Errorf("bad --peer-allow %q: want a prefix, e.g. 10.0.0.0/8", a)
		}
		s.Allow = append(s.Allow, pfx.Masked())
	}
	keys, err := peer.LoadKeys(p.keyFile)
	var ke *peer.KeyError
	switch {
	case errors.Is(err, peer.ErrNoKey):
		return s, errors.New("--peer-key FILE is required with --peer and --peer-listen (make one: (umask 077; head -c 32 /dev/urandom > FILE))")
	case errors.As(err, &ke):
		return s, fmt.Errorf("--peer-key%s", ke.Detail)
	case err != nil:
		return s, err
	}
	if _, err := keys.Own(); err != nil && p.gateway != "" {
		return s, fmt.Errorf("--peer-key %s %w", p.keyFile, err)
	}
	s.Keys, s.KeyFile = keys, p.keyFile
	return s, nil
}

// checkPeerAddr accepts a numeric ADDR:PORT (a name would be resolved at
// every dial, and a listener needs an address); a listener may leave ADDR empty.
func checkPeerAddr(addr string, listener bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	if host == "" && listener {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	if !listener && (a.IsUnspecified() || a.IsMulticast()) {
		return fmt.Errorf("%s cannot be dialed", a)
	}
	return nil
}

// printPeer writes the warm-path lines of `pepsal status`.
func printPeer(w io.Writer, p *report.PeerStats) {
	if p == nil {
		return
	}
	if s := p.Pool; s != nil {
		fmt.Fprintf(w, "warm pool: gateway %s, %d/%d idle, %d in use, %d dialing; %d refills, %d dial failures, %d flows rode it, %d recycled, %d found dead; fast open instead: %d pool empty, %d gateway down\n",
			s.Gateway, s.Idle, s.Size, s.InUse, s.Dialing, s.Refills, s.DialFailures, s.Taken, s.Recycled, s.Dead, s.FallbackEmpty, s.FallbackDown)
		if s.BackoffMS > 0 {
			fmt.Fprintf(w, "warm pool: backing off %s: %s\n", time.Duration(s.BackoffMS)*time.Millisecond, s.LastError)
		}
	}
	if s := p.Gateway; s != nil {
		var refused []string
		for _, r := range report.AuthReasons {
			refused = append(refused, fmt.Sprintf("%s %d", r, s.Refused[r]))
		}
		fmt.Fprintf(w, "warm peers: listening on %s: %d accepted, %d waiting (%d authenticating; at most %d, %d authenticating per source), %d flows served, %d closed idle; refused: %s\n",
			s.Listen, s.Accepted, s.Waiting, s.Authenticating, s.MaxWaiting, s.PerSource, s.Served, s.IdleClosed, strings.Join(refused, ", "))
		printTerminals(w, s)
	}
}

// printTerminals writes the key file's lines of `pepsal status`: its
// reloads, and each terminal of a key ring.
func printTerminals(w io.Writer, s *report.PeerGatewayStats) {
	if s.KeyReloads+s.KeyReloadFailures > 0 {
		fmt.Fprintf(w, "warm peer keys: reloaded %d times, %d failed\n", s.KeyReloads, s.KeyReloadFailures)
	}
	if s.KeyError != "" {
		fmt.Fprintf(w, "warm peer keys: the key file does not load, the keys before stay in force: %s\n", s.KeyError)
	}
	for _, t := range s.Terminals {
		state, clients := "", "any client"
		if t.Revoked {
			state = " (revoked)"
		}
		if len(t.Clients) > 0 {
			clients = "clients " + strings.Join(t.Clients, ",")
		}
		var refused []string
		for _, r := range report.AuthReasons {
			if n := t.Refused[r]; n > 0 {
				refused = append(refused, fmt.Sprintf("%s %d", r, n))
			}
		}
		if len(refused) == 0 {
			refused = []string{"none"}
		}
		fmt.Fprintf(w, "warm peer %s%s: %s; %d pooled, %d flows served, %d pooled closed at revocation; refused: %s\n",
			t.ID, state, clients, t.Pooled, t.Served, t.RevokedClosed, strings.Join(refused, ", "))
	}
}
