// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
	"strings"

	"github.com/pepsal/pepsal/userspace/forwardfilter"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/tuning"
	"github.com/spf13/cobra"
)

// flagValues completes the flags whose values are a fixed set, or this
// host's interfaces, wherever a command has them: cobra's `pepsal
// completion bash|zsh|fish` scripts ask the binary (`pepsal __complete`),
// so a flag added later to any command completes the same way. Each value
// is "value\tdescription" (zsh and fish show the description).
var flagValues = map[string]func() []string{
	"relay": func() []string {
		return []string{
			relay.ModeSplice.String() + "\tuserspace relay with splice (default)",
			relay.ModeSockmap.String() + "\tin-kernel relay (SOCKMAP)",
		}
	},
	"role": func() []string {
		return []string{
			tuning.Auto.String() + "\teach leg by its handshake round trip (default)",
			tuning.Gateway.String() + "\tclients are across the satellite link",
			tuning.Terminal.String() + "\tservers are across the satellite link",
			tuning.NoRole.String() + "\tLinux's defaults on both legs",
		}
	},
	"rto-max": func() []string {
		return []string{
			"auto\t4 handshake RTTs, 2s to 120s (default)",
			"0\toff: the kernel's back-off up to 120s",
		}
	},
	"forward-filter": func() []string {
		return []string{
			forwardfilter.Check.String() + "\trefuse to start while forwarded traffic is filtered (default)",
			forwardfilter.Mirrored.String() + "\tthe forward policy is repeated for pepsal's connections",
			forwardfilter.Ignore.String() + "\tstart anyway, with a warning",
		}
	},
	"log-level":    func() []string { return []string{"debug", "info", "warn", "error"} },
	"log-format":   func() []string { return []string{"text\tkey=value (default)", "json\tone object per line"} },
	"iface":        splitIfaces,
	"return-iface": splitIfaces,
}

// splitIfaces are the interfaces --iface may name: every one but loopback.
func splitIfaces() []string {
	all, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, ifc := range all {
		if ifc.Flags&net.FlagLoopback == 0 {
			out = append(out, ifc.Name)
		}
	}
	return out
}

// registerCompletions gives root and its subcommands their value
// completions; none of pepsal's commands takes arguments, so none
// completes file names in their place.
func registerCompletions(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.ValidArgsFunction == nil && !c.HasSubCommands() {
			c.ValidArgsFunction = cobra.NoFileCompletions
		}
		for name, values := range flagValues {
			if c.Flags().Lookup(name) == nil {
				continue
			}
			_ = c.RegisterFlagCompletionFunc(name, completeFrom(values)) // fails only when registered twice
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// completeFrom completes a flag from values, those that start with what is
// typed, and never with file names.
func completeFrom(values func() []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, typed string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, v := range values() {
			if strings.HasPrefix(v, typed) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
