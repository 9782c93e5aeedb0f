// Command pepsal is a transparent TCP performance-enhancing proxy steered by eBPF.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time (make build).
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:           "pepsal",
		Short:         "Transparent TCP performance-enhancing proxy, steered by eBPF",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), attachCmd(), detachCmd(), statusCmd(), connsCmd(), versionCmd())
	if err := root.Execute(); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(os.Stderr, "pepsal: %s\n", msg)
		}
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit code, and a message when there is
// something to say beyond what was printed.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func exitCode(err error) int {
	if e, ok := err.(exitError); ok {
		return e.code
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
