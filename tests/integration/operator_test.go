// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// readmeBlock returns the shell block of README.md that follows marker.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("README.md has no %s", marker)
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatalf("no shell block after %s", marker)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("the shell block after %s does not end", marker)
	}
	return block
}

// TestReadmeBpftool runs README's "Inspecting with bpftool" block as
// printed, in a namespace where pepsal runs: every command succeeds, and
// every program and map it names is shown under its whole name (the
// kernel keeps 15 characters of a name).
func TestReadmeBpftool(t *testing.T) {
	block := readmeBlock(t, "<!-- bpftool-block -->")
	b := newBed(t, defaultSuite())
	b.startPepsal()
	r := runCmdIn(b.Router, "nsenter", "--net="+b.Router.Path(), "--", "sh", "-ec", block)
	if r.code != 0 {
		t.Fatalf("README's bpftool block: exit %d\nstderr: %s\nstdout: %s", r.code, r.stderr, r.stdout)
	}
	names := regexp.MustCompile(`\bpepsal_[a-z_]+`).FindAllString(block, -1)
	if len(names) < 10 {
		t.Fatalf("the block names only %v", names)
	}
	for _, name := range names {
		if len(name) > 15 {
			t.Errorf("%s is longer than the kernel's 15 characters", name)
		}
		if !strings.Contains(r.stdout, name) {
			t.Errorf("%s does not appear in the output:\n%s", name, r.stdout)
		}
	}
	// `ls $PINS` lists names too: each program must also be shown by
	// bpftool itself, which prints "name NAME".
	for _, m := range regexp.MustCompile(`prog show name (pepsal_[a-z_]+)`).FindAllStringSubmatch(block, -1) {
		if !strings.Contains(r.stdout, "name "+m[1]) {
			t.Errorf("bpftool did not show program %s:\n%s", m[1], r.stdout)
		}
	}
	// Every map the dumps show has BTF: bpftool prints its fields by name.
	for _, field := range []string{`"pid"`, `"version"`, `"syn_diverted"`, `"mark"`} {
		if !strings.Contains(r.stdout, field) {
			t.Errorf("no %s field in the dumps: a map without BTF?", field)
		}
	}
}

// TestLogFormatJSON: with --log-format json every line the daemon writes
// is one JSON object, the serving line among them.
func TestLogFormatJSON(t *testing.T) {
	b := newBed(t, defaultSuite())
	d := b.startPepsal("--iface", testbed.RouterClientIf, "--log-format", "json")
	waitFor(t, 5*time.Second, "the serving line", func() bool { return strings.Contains(d.Output(), `"msg":"serving"`) })
	for _, line := range strings.Split(strings.TrimSpace(d.Output()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || m["level"] == nil || m["time"] == nil {
			t.Errorf("not a JSON log line (%v): %s", err, line)
		}
	}
}
