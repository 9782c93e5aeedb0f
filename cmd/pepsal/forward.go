// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/pepsal/pepsal/userspace/forwardfilter"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/spf13/pflag"
)

// DefaultServerMark is the socket mark of server legs under
// --forward-filter=mirrored: next to --fwmark's default, and never routed
// locally (pepsal's rule compares the whole mark).
const DefaultServerMark = 0x5e9a2

// forwardFlags say what to do about the router's filtering of forwarded
// traffic, which split connections bypass: run's and attach's.
type forwardFlags struct {
	mode       string
	serverMark uint32
	fl         *pflag.FlagSet // to tell a --server-mark given from its default
}

// register adds --forward-filter, and --server-mark when the command dials
// (run).
func (f *forwardFlags) register(fl *pflag.FlagSet, dials bool) {
	f.fl = fl
	fl.StringVar(&f.mode, "forward-filter", forwardfilter.Check.String(),
		"when the router filters forwarded traffic (nftables or iptables forward chains), which split connections bypass: "+
			"check (refuse to start), mirrored (the operator repeats that policy for pepsal's connections, see README \"Firewall\"; server legs carry --server-mark) "+
			"or ignore (start with a warning)")
	if dials {
		fl.Uint32Var(&f.serverMark, "server-mark", DefaultServerMark,
			"with --forward-filter=mirrored: socket mark (SO_MARK) of the server legs pepsal dials, for output-hook rules (meta mark); 0: none")
	}
}

// forwardPlan is the checked flags.
type forwardPlan struct {
	mode       forwardfilter.Mode
	serverMark uint32 // 0: none
}

// plan checks the flags; fwmark is --fwmark, which server legs must not carry.
func (f *forwardFlags) plan(fwmark uint32) (forwardPlan, error) {
	var p forwardPlan
	if err := p.mode.UnmarshalText([]byte(f.mode)); err != nil {
		return p, fmt.Errorf("--forward-filter %w", err)
	}
	if f.fl.Lookup("server-mark") == nil {
		return p, nil
	}
	if p.mode != forwardfilter.Mirrored {
		if f.fl.Changed("server-mark") {
			return p, fmt.Errorf("--server-mark needs --forward-filter=mirrored")
		}
		return p, nil
	}
	if f.serverMark == fwmark {
		return p, fmt.Errorf("--server-mark %#x is --fwmark's: server legs would be routed back to this host; pick another", f.serverMark)
	}
	p.serverMark = f.serverMark
	return p, nil
}

// checkForward reads this namespace's netfilter (privileges checked) and
// applies the mode: check refuses while forwarded traffic is filtered,
// mirrored and ignore start and say what they found. What it returns is
// for `pepsal status`.
func checkForward(e *env, p forwardPlan, log *slog.Logger) (report.ForwardFilter, error) {
	out := report.ForwardFilter{Mode: p.mode.String(), ServerMark: p.serverMark}
	found, err := e.forwardFilter()
	if err != nil {
		if p.mode == forwardfilter.Check {
			return out, fmt.Errorf("cannot tell whether the router filters forwarded traffic: %w; --forward-filter=ignore starts without knowing", err)
		}
		log.Warn("cannot tell whether the router filters forwarded traffic", "err", err, "forward_filter", out.Mode)
		out.Found = "unknown: " + err.Error()
		return out, nil
	}
	out.Found = found.String()
	switch {
	case !found.Filters():
		return out, nil
	case p.mode == forwardfilter.Check:
		return out, forwardRefusal(found)
	case p.mode == forwardfilter.Ignore:
		log.Warn("the router filters forwarded traffic and split connections bypass it (--forward-filter=ignore)", "found", out.Found)
	default:
		log.Info("the router filters forwarded traffic; the operator mirrors it for split connections (--forward-filter=mirrored)",
			"found", out.Found, "server_mark", fmt.Sprintf("%#x", p.serverMark))
	}
	return out, nil
}

// forwardRefusal is check's one line.
func forwardRefusal(found forwardfilter.Finding) error {
	return errors.New("the router filters forwarded traffic (" + found.String() + "); connections pepsal splits would bypass it: " +
		`see README "Firewall", then use --forward-filter=mirrored or --forward-filter=ignore`)
}
