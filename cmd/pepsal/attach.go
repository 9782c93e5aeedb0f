// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"log/slog"

	"github.com/pepsal/pepsal/loader"
	"github.com/spf13/cobra"
)

func attachCmd(e *env) *cobra.Command {
	var p policyFlags
	var fwd forwardFlags
	var maxConns string
	cmd := &cobra.Command{
		Use:   "attach",
		Short: "Attach the classifier and steering to interfaces, pinned, and exit (a daemon serves with `pepsal run`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return attach(cmd, e, &p, &fwd, maxConns)
		},
	}
	p.register(cmd)
	fwd.register(cmd.Flags(), false)
	registerMaxConns(cmd.Flags(), &maxConns)
	return cmd
}

func attach(cmd *cobra.Command, e *env, p *policyFlags, f *forwardFlags, maxConns string) error {
	cfg, err := p.config()
	if err != nil {
		return usage(err)
	}
	if len(cfg.Ifaces) == 0 {
		return usage(fmt.Errorf("attach needs at least one --iface"))
	}
	asked, err := parseMaxConns(maxConns)
	if err != nil {
		return usage(err)
	}
	fwd, err := f.plan(cfg.Routing.Mark)
	if err != nil {
		return usage(err)
	}
	if err := e.privileged(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	// Interception starts here: what it bypasses is checked first.
	if _, err := checkForward(e, fwd, log); err != nil {
		return err
	}
	// Maps are sized for the daemon's limit; derived here as `run` derives it.
	limit, err := settleLimit(asked, false, log)
	if err != nil {
		return err
	}
	cfg.MapConns = limit.MapConns()
	att, err := loader.Attach(cfg)
	if err != nil {
		return err
	}
	defer att.Close()
	fmt.Fprintf(cmd.OutOrStdout(), "attached to %v, pinned in %s\n", cfg.Ifaces, att.Dir)
	return nil
}

func detachCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "detach",
		Short: "Remove every trace of pepsal from this network namespace (also after a killed daemon)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := e.privileged(); err != nil {
				return err
			}
			return loader.Detach()
		},
	}
}
