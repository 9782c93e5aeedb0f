// SPDX-License-Identifier: Apache-2.0

// Package gendocs writes pepsal's man pages and shell completions from its
// cobra commands, for the package (make package). It is kept out of the
// pepsal binary: only a build with -tags pepsal_gendocs links it, so the
// daemon carries no markdown renderer.
package gendocs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Section is the manual section of pepsal's pages: a daemon for the
// administrator.
const Section = "8"

// Completions are the completion scripts Write makes, by shell: the file
// name each shell's loader looks for.
var Completions = map[string]string{
	"bash": "pepsal",
	"zsh":  "_pepsal",
	"fish": "pepsal.fish",
}

// Write writes a man page per command of root in dir/man8 (pepsal.8,
// pepsal-run.8, ...) and the completion scripts in dir/completions. The
// pages are dated by SOURCE_DATE_EPOCH when it is set, so that a package
// built twice from one commit is the same.
func Write(root *cobra.Command, dir, version string) error {
	root.InitDefaultCompletionCmd() // a command of every run, documented too
	root.DisableAutoGenTag = true   // no "Auto generated" date in each page
	man := filepath.Join(dir, "man"+Section)
	if err := os.MkdirAll(man, 0o755); err != nil {
		return err
	}
	header := doc.GenManHeader{Section: Section, Source: "pepsal " + version, Manual: "System Manager's Manual"}
	if err := writeMan(root, header, man); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	comp := filepath.Join(dir, "completions")
	if err := os.MkdirAll(comp, 0o755); err != nil {
		return err
	}
	for shell, name := range Completions {
		if err := writeCompletion(root, shell, filepath.Join(comp, name)); err != nil {
			return fmt.Errorf("%s completion: %w", shell, err)
		}
	}
	return nil
}

// writeMan writes the page of c and of each of its available subcommands
// in dir, as doc.GenManTree would, with the options as tagged paragraphs.
func writeMan(c *cobra.Command, header doc.GenManHeader, dir string) error {
	for _, sub := range c.Commands() {
		if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
			continue
		}
		if err := writeMan(sub, header, dir); err != nil {
			return err
		}
	}
	var page bytes.Buffer
	if err := doc.GenMan(c, &header, &page); err != nil { // header by value: GenMan fills in each page's title
		return err
	}
	name := strings.ReplaceAll(c.CommandPath(), " ", "-") + "." + Section
	return os.WriteFile(filepath.Join(dir, name), tagOptions(page.Bytes()), 0o644)
}

// optionPara is an option as cobra/doc writes it, a paragraph whose
// description follows a tab on the next line: roff fills both into one
// line with a gap. tagOptions makes each a tagged paragraph (.TP), the
// option on its line and the description indented under it, as man
// pages list options.
var optionPara = regexp.MustCompile(`(?m)^(?:\.PP\n)?(\\fB-.*)\n\t(.*)$`)

func tagOptions(page []byte) []byte {
	return optionPara.ReplaceAll(page, []byte(".TP\n$1\n$2"))
}

func writeCompletion(root *cobra.Command, shell, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	switch shell {
	case "bash":
		err = root.GenBashCompletionV2(f, true)
	case "zsh":
		err = root.GenZshCompletion(f)
	case "fish":
		err = root.GenFishCompletion(f, true)
	default:
		err = fmt.Errorf("no completion for %s", shell)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
