// SPDX-License-Identifier: Apache-2.0

//go:build pepsal_gendocs

package main

import (
	"github.com/pepsal/pepsal/cmd/pepsal/internal/gendocs"
	"github.com/spf13/cobra"
)

// A build with -tags pepsal_gendocs (make package) has a hidden command
// that writes the man pages and completion scripts; the pepsal that ships
// has neither it nor the markdown renderer behind it.
func init() { extraCommands = append(extraCommands, genDocsCmd) }

func genDocsCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-docs DIR",
		Short:  "Write the man pages (DIR/man8) and completion scripts (DIR/completions)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return gendocs.Write(root, args[0], version)
		},
	}
}
