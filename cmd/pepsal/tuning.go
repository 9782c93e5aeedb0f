// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"github.com/spf13/cobra"
)

// tuningFlags are the per-leg TCP settings of `pepsal run`: a role preset,
// then any explicit flag on top of it.
type tuningFlags struct {
	role         string
	fastOpen     bool
	fastOpenWait time.Duration
	fastOpenFrom []string
	legs         [2]legFlags // client, server
	keepAlive    time.Duration
	userTimeout  time.Duration
	rtoMax       string
}

type legFlags struct {
	name               string
	cc                 string
	initCwnd, initRwnd uint32
	sndBuf, rcvBuf     string
	noDelay, quickAck  bool
	mss                int
}

func (t *tuningFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&t.role, "role", tuning.Auto.String(), "preset for the long (satellite) leg: auto (each leg by its handshake round trip: initial window one BDP of 20 Mbit/s, bbr from 150 ms), gateway (clients are across the link), terminal (servers are) or none (Linux's defaults)")
	f.BoolVar(&t.fastOpen, "fastopen", false, "TCP Fast Open without cookies, for the link between two pepsals: dial with the client's first bytes in the SYN, accept data in SYNs (enables the server bit of net.ipv4.tcp_fastopen, restored at exit)")
	f.StringArrayVar(&t.fastOpenFrom, "fastopen-from", nil, "take data in SYNs (fast open, --role gateway or --fastopen) only from this prefix, e.g. the terminals' link 192.0.2.0/24 (repeatable; default: from nowhere, a SYN with data from anywhere else is forwarded unsplit: its source is not proven)")
	f.DurationVar(&t.fastOpenWait, "fastopen-wait", 20*time.Millisecond, "how long to wait for a client's first bytes to put them in the upstream SYN")
	f.DurationVar(&t.keepAlive, "keepalive", tuning.DefaultKeepAlive, "both legs: idle time before TCP keepalive probes (4, a quarter of it apart), so that dead peers are found; 0: off")
	f.DurationVar(&t.userTimeout, "user-timeout", tuning.DefaultUserTimeout, "both legs: drop a leg whose data (or keepalive probes) stay unacknowledged this long (TCP_USER_TIMEOUT), resetting the other; 0: the kernel's (~15 min, set explicitly on legs with --rto-max, whose bound would shorten it)")
	f.StringVar(&t.rtoMax, "rto-max", "auto", "long legs: bound on the retransmission timeout and its back-off (TCP_RTO_MAX_MS, Linux 6.15+; ignored before), so that a leg retransmits at most this long after a link outage ends: auto (4x the leg's handshake RTT, 2s to 120s), a duration from 1s to 120s, or 0 (off: the kernel's back-off up to 120s)")
	t.legs[0].name, t.legs[1].name = "client", "server"
	for i := range t.legs {
		l := &t.legs[i]
		f.StringVar(&l.cc, l.name+"-cc", "", l.name+" leg congestion control (reno, cubic, bbr, ...)")
		f.Uint32Var(&l.initCwnd, l.name+"-initcwnd", 0, l.name+" leg initial congestion window, segments")
		f.Uint32Var(&l.initRwnd, l.name+"-initrwnd", 0, l.name+" leg initial receive window, segments")
		f.StringVar(&l.sndBuf, l.name+"-sndbuf", "", l.name+" leg send buffer, e.g. 8MiB (fixed; default autotuned)")
		f.StringVar(&l.rcvBuf, l.name+"-rcvbuf", "", l.name+" leg receive buffer, e.g. 8MiB (fixed; default autotuned)")
		f.BoolVar(&l.noDelay, l.name+"-nodelay", true, l.name+" leg TCP_NODELAY")
		f.BoolVar(&l.quickAck, l.name+"-quickack", false, l.name+" leg TCP_QUICKACK at connection start")
		f.IntVar(&l.mss, l.name+"-mss", 0, l.name+" leg MSS clamp (TCP_MAXSEG)")
	}
}

func (t *tuningFlags) tuning(cmd *cobra.Command) (tuning.Tuning, error) {
	var role tuning.Role
	if err := role.UnmarshalText([]byte(t.role)); err != nil {
		return tuning.Tuning{}, fmt.Errorf("--%w", err)
	}
	tun := role.Tuning()
	if cmd.Flags().Changed("fastopen") {
		tun.FastOpen.Dial, tun.FastOpen.Accept = t.fastOpen, t.fastOpen
	}
	if tun.FastOpen.Dial || cmd.Flags().Changed("fastopen-wait") {
		if t.fastOpenWait <= 0 || t.fastOpenWait > time.Second {
			return tun, fmt.Errorf("--fastopen-wait must be between 0 and 1s")
		}
		tun.FastOpen.Wait = t.fastOpenWait
	}
	if err := t.acceptFrom(&tun); err != nil {
		return tun, err
	}
	legs := [2]*tuning.Leg{&tun.Client, &tun.Server}
	if err := t.boundRTO(cmd, legs); err != nil {
		return tun, err
	}
	f := cmd.Flags()
	for i, l := range t.legs {
		leg := legs[i]
		changed := func(opt string) bool { return f.Changed(l.name + "-" + opt) }
		if changed("cc") {
			leg.CC = l.cc
		}
		if changed("initcwnd") {
			leg.InitCwnd = l.initCwnd
		}
		if changed("initrwnd") {
			leg.InitRwnd = l.initRwnd
		}
		for _, b := range []struct {
			opt string
			val string
			dst *int
		}{{"sndbuf", l.sndBuf, &leg.SndBuf}, {"rcvbuf", l.rcvBuf, &leg.RcvBuf}} {
			if !changed(b.opt) {
				continue
			}
			n, err := parseSize(b.val)
			if err != nil || n > 1<<30 {
				return tun, fmt.Errorf("bad --%s-%s %q: want a size up to 1GiB, e.g. 8MiB", l.name, b.opt, b.val)
			}
			*b.dst = int(n)
		}
		if changed("nodelay") {
			v := l.noDelay
			leg.NoDelay = &v
		}
		if changed("quickack") {
			leg.QuickAck = l.quickAck
		}
		if changed("mss") {
			leg.MSS = l.mss
		}
		leg.KeepAlive, leg.UserTimeout = t.keepAlive, t.userTimeout
		if err := leg.Validate(l.name); err != nil {
			return tun, legFlagErr(err)
		}
	}
	return tun, nil
}

// boundRTO puts --rto-max on the legs the role makes long (both with
// --role auto, each by its handshake RTT). With --user-timeout 0 a bounded
// leg gets the give-up time the kernel had without the bound: since 6.15
// the kernel computes it from the bound (14 s of outage at 1 s).
func (t *tuningFlags) boundRTO(cmd *cobra.Command, legs [2]*tuning.Leg) error {
	m, err := tuning.ParseRTOMax(t.rtoMax)
	if err != nil {
		return fmt.Errorf("bad --rto-max: %w", err)
	}
	long := false
	stats := &tuning.RTOStats{}
	for _, l := range legs {
		if !l.RTOMax.On() {
			continue
		}
		long = true
		if !m.On() {
			l.RTOMax = tuning.RTOMax{}
			continue
		}
		l.RTOMax.Fixed, l.RTOMax.Auto, l.RTOMax.Stats = m.Fixed, m.Auto, stats
		if t.userTimeout == 0 {
			l.RTOMax.GiveUp = tuning.KernelGiveUp(retries2())
		}
	}
	if !long && m.On() && cmd.Flags().Changed("rto-max") {
		return fmt.Errorf("--rto-max bounds the long leg: it needs --role gateway, terminal or auto")
	}
	return nil
}

// retries2 is net.ipv4.tcp_retries2 here, or its default.
func retries2() int {
	s, err := sockopt.ReadSysctl("net/ipv4/tcp_retries2")
	if err != nil {
		return 15
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 15
	}
	return n
}

// acceptFrom reads --fastopen-from, which only listeners that take data in
// SYNs have a use for.
func (t *tuningFlags) acceptFrom(tun *tuning.Tuning) error {
	from, err := parsePrefixes("--fastopen-from", t.fastOpenFrom)
	if err != nil {
		return err
	}
	if len(from) > 0 && !tun.FastOpen.Accept {
		return fmt.Errorf("--fastopen-from needs listeners that take data in SYNs: --role gateway or --fastopen")
	}
	tun.FastOpen.AcceptFrom = from
	return nil
}

// legFlagErr names the flag of a leg setting out of range.
func legFlagErr(err error) error {
	var le *tuning.LegError
	if !errors.As(err, &le) {
		return err
	}
	flag := "--" + le.Leg + "-" + le.Field // --client-cc, --server-mss, --client-initcwnd
	switch le.Field {
	case "keepalive", "user-timeout", "rto-max": // one flag for both legs
		flag = "--" + le.Field
	case "buffer": // --client-sndbuf and --client-rcvbuf
		flag = "--" + le.Leg + " buffer"
	}
	return fmt.Errorf("%s %s", flag, le.Msg)
}
