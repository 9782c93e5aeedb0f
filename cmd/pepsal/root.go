// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/forwardfilter"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/spf13/cobra"
)

// env is what the commands take from their process: the command line, where
// they write, the gate before the host is touched, and the way to the
// daemon and the attachment of this namespace. main passes the process's;
// tests their own, to run the commands in-process.
type env struct {
	args           []string // the command line without the program's name; also an upgrade's
	stdout, stderr io.Writer
	// privileged fails unless the process may load BPF and change
	// networking: everything that touches the host comes after it.
	privileged func() error
	// query asks the daemon of this namespace over its control socket.
	query func(request string, out any) error
	// openAttachment opens this namespace's attachment (loader.Open).
	openAttachment func() (*loader.Attachment, error)
	// forwardFilter reads what filters forwarded traffic in this namespace
	// (forwardfilter.Inspect), after privileged.
	forwardFilter func() (forwardfilter.Finding, error)
	// netRaw fails unless raw sockets may be opened (requireNetRaw), for
	// the warm paths' outage watch; nil: not checked.
	netRaw func() error
}

// processEnv is the env of the running process.
func processEnv() *env {
	return &env{
		args:           os.Args[1:],
		stdout:         os.Stdout,
		stderr:         os.Stderr,
		privileged:     requirePrivileges,
		query:          report.Query,
		openAttachment: loader.Open,
		forwardFilter:  forwardfilter.Inspect,
		netRaw:         requireNetRaw,
	}
}

// newRoot is the pepsal command and its subcommands, writing to e.
func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "pepsal",
		Short:         "Transparent TCP performance-enhancing proxy, steered by eBPF",
		Long:          rootLong,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(append([]string{}, e.args...)) // never nil: cobra would read os.Args
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.AddCommand(runCmd(e), attachCmd(e), detachCmd(e), statusCmd(e), connsCmd(e), versionCmd())
	root.AddCommand(explainCmd(e))
	for _, c := range extraCommands {
		root.AddCommand(c(root))
	}
	addHelp(root)
	registerCompletions(root)
	// --version says what `pepsal version` says.
	root.SetVersionTemplate(`{{printf "pepsal %s\n" .Version}}`)
	markUsageErrors(root)
	return root
}

// usageError is a command line that is wrong (an unknown flag or command,
// a flag's value refused, arguments missing): exit 2, as getopt-style
// tools do, so that a script tells it from a failure at run time (1).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// usage marks err as a usage error (nil stays nil).
func usage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// markUsageErrors makes cobra's own refusals usage errors: flags it cannot
// parse and arguments a command's Args refuses.
func markUsageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(err) })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error { return usage(args(cmd, a)) }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// extraCommands are hidden commands that only some builds have (the man
// page generator: gendocs.go, built with -tags pepsal_gendocs).
var extraCommands []func(root *cobra.Command) *cobra.Command

// execute runs the command line of e and returns the exit code; an error is
// one line on e's stderr.
func execute(ctx context.Context, e *env) int {
	err := newRoot(e).ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(e.stderr, "pepsal: %s\n", msg)
	}
	return exitCode(err)
}

// exitError carries a specific exit code, and a message when there is
// something to say beyond what was printed.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func exitCode(err error) int {
	var u usageError
	switch e, ok := err.(exitError); {
	case ok:
		return e.code
	case errors.As(err, &u), strings.HasPrefix(err.Error(), "unknown command "):
		// cobra finds an unknown subcommand before any hook of ours runs.
		return 2
	}
	return 1
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "pepsal %s\n", version)
		},
	}
}
