// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/cmd/pepsal/internal/gendocs"
	"github.com/pepsal/pepsal/userspace/forwardfilter"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/tuning"
	"github.com/spf13/cobra"
)

// complete is what `pepsal __complete ARGS...` offers (the shells' scripts
// ask it), the values without their descriptions, and its directive.
func complete(t *testing.T, args ...string) (values []string, directive string) {
	t.Helper()
	r := pepsal(t, untouchable(t), append([]string{cobra.ShellCompRequestCmd}, args...)...)
	if r.code != 0 {
		t.Fatalf("__complete %v: exit %d: %s", args, r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for _, l := range lines[:len(lines)-1] {
		v, _, _ := strings.Cut(l, "\t")
		values = append(values, v)
	}
	return values, lines[len(lines)-1]
}

// TestVersionFlag: --version (and -v) says exactly what `pepsal version` says.
func TestVersionFlag(t *testing.T) {
	want := pepsal(t, untouchable(t), "version")
	for _, flag := range []string{"--version", "-v"} {
		if r := pepsal(t, untouchable(t), flag); r != want {
			t.Errorf("pepsal %s: %+v, pepsal version: %+v", flag, r, want)
		}
	}
}

// TestCompletionValues: the flags whose values are a set complete to that
// set (each a value the flag takes), --iface to this host's interfaces,
// and none of them, nor a command's arguments, to file names.
func TestCompletionValues(t *testing.T) {
	var ifaces []string
	all, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range all {
		if ifc.Flags&net.FlagLoopback == 0 {
			ifaces = append(ifaces, ifc.Name)
		}
	}
	noFiles := ":4" // cobra.ShellCompDirectiveNoFileComp
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"run", "--relay", ""}, []string{"splice", "sockmap"}},
		{[]string{"run", "--relay", "so"}, []string{"sockmap"}},
		{[]string{"run", "--role", ""}, []string{"auto", "gateway", "terminal", "none"}},
		{[]string{"run", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
		{[]string{"run", "--rto-max", ""}, []string{"auto", "0"}},
		{[]string{"run", "--forward-filter", ""}, []string{"check", "mirrored", "ignore"}},
		{[]string{"run", "--log-format", ""}, []string{"text", "json"}},
		{[]string{"attach", "--forward-filter", "m"}, []string{"mirrored"}},
		{[]string{"run", "--iface", ""}, ifaces},
		{[]string{"attach", "--iface", ""}, ifaces},
		{[]string{"run", "--return-iface", ""}, ifaces},
		{[]string{"status", ""}, nil},
		{[]string{"detach", ""}, nil},
	} {
		got, directive := complete(t, c.args...)
		if !slices.Equal(got, c.want) || directive != noFiles {
			t.Errorf("complete %q: %q, directive %s; want %q, %s", c.args, got, directive, c.want, noFiles)
		}
	}
	for _, v := range []string{"splice", "sockmap"} {
		var m relay.Mode
		if err := m.UnmarshalText([]byte(v)); err != nil {
			t.Errorf("--relay completes %s, which it refuses: %v", v, err)
		}
	}
	for _, v := range []string{"gateway", "terminal"} {
		var r tuning.Role
		if err := r.UnmarshalText([]byte(v)); err != nil {
			t.Errorf("--role completes %s, which it refuses: %v", v, err)
		}
	}
	for _, v := range []string{"auto", "0"} {
		if _, err := tuning.ParseRTOMax(v); err != nil {
			t.Errorf("--rto-max completes %s, which it refuses: %v", v, err)
		}
	}
	for _, v := range []string{"check", "mirrored", "ignore"} {
		var m forwardfilter.Mode
		if err := m.UnmarshalText([]byte(v)); err != nil {
			t.Errorf("--forward-filter completes %s, which it refuses: %v", v, err)
		}
	}
	for _, v := range []string{"debug", "info", "warn", "error"} {
		if _, err := newLogger(v, "text", nil); err != nil {
			t.Errorf("--log-level completes %s, which it refuses: %v", v, err)
		}
	}
	for _, v := range []string{"text", "json"} {
		if _, err := newLogger("info", v, nil); err != nil {
			t.Errorf("--log-format completes %s, which it refuses: %v", v, err)
		}
	}
}

// TestManPages: a page in section 8 for each command, the main ones with
// examples, and the completion scripts; what make package installs.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if err := gendocs.Write(newRoot(untouchable(t)), dir, "test"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pepsal", "pepsal-run", "pepsal-attach", "pepsal-detach", "pepsal-status", "pepsal-conns", "pepsal-version", "pepsal-completion-bash"} {
		page, err := os.ReadFile(filepath.Join(dir, "man8", name+".8"))
		if err != nil {
			t.Error(err)
			continue
		}
		text := string(page)
		if !strings.Contains(text, `.TH "`+strings.ToUpper(name)+`" "8"`) || !strings.Contains(text, `"pepsal test"`) {
			t.Errorf("%s.8: no section 8 title of version test:\n%s", name, text)
		}
		if strings.Contains(text, "\n\t") {
			t.Errorf("%s.8: an option's description left after a tab (not a tagged paragraph)", name)
		}
		example := name != "pepsal" && name != "pepsal-version" && !strings.HasPrefix(name, "pepsal-completion")
		if example && !strings.Contains(text, ".SH EXAMPLE") {
			t.Errorf("%s.8 has no EXAMPLE section", name)
		}
	}
	for _, name := range gendocs.Completions {
		if b, err := os.ReadFile(filepath.Join(dir, "completions", name)); err != nil || !strings.Contains(string(b), "__complete") {
			t.Errorf("completion %s: %v", name, err)
		}
	}
}
