// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestGeneratedObjectsAreFresh rebuilds the BPF objects with the exact
// //go:generate lines of gen.go (with their -command alias expanded) and fails when the committed .o or Go files
// differ: someone changed bpf/ without `make generate`.
func TestGeneratedObjectsAreFresh(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		t.Fatal("clang is needed to check the committed BPF objects (make test installs it)")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]string
	aliases := map[string][]string{} // //go:generate -command NAME ARGS...
	for _, l := range strings.Split(string(src), "\n") {
		rest, ok := strings.CutPrefix(l, "//go:generate ")
		if !ok {
			continue
		}
		words := splitQuoted(rest)
		if len(words) >= 2 && words[0] == "-command" {
			aliases[words[1]] = words[2:]
			continue
		}
		if len(words) > 0 && aliases[words[0]] != nil {
			words = append(slices.Clone(aliases[words[0]]), words[1:]...)
		}
		lines = append(lines, words)
	}
	if len(lines) == 0 {
		t.Fatal("no //go:generate lines in gen.go")
	}
	out := t.TempDir()
	for _, args := range lines {
		// "go tool bpf2go FLAGS... ident source": output flags go right after bpf2go.
		if len(args) < 3 || args[2] != "bpf2go" {
			t.Fatalf("unexpected generate line %q", args)
		}
		full := append([]string{"tool", "bpf2go", "-output-dir", out}, args[3:]...)
		cmd := exec.Command("go", full...)
		cmd.Env = append(os.Environ(), "GOPACKAGE=loader")
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bpf2go: %v\n%s", err, msg)
		}
	}
	fresh, _ := filepath.Glob(filepath.Join(out, "*"))
	if len(fresh) == 0 {
		t.Fatal("bpf2go produced nothing")
	}
	for _, f := range fresh {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Base(f))
		if err != nil {
			t.Errorf("%s is not committed: run make generate", filepath.Base(f))
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make generate and commit the result", filepath.Base(f))
		}
	}
}

// splitQuoted splits on spaces, keeping double-quoted parts together.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case r == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
