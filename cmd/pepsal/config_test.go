// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes text to a config file only its owner may write.
func writeConfig(t *testing.T, text string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pepsal.toml")
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigFile: a key per flag; the command line wins; lists for the
// repeatable flags only; unknown keys, wrong shapes and a file others may
// write are one-line errors naming the file.
func TestConfigFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("config files must be root's: run as root")
	}
	good := `iface = ["eth0", "eth1"]
role = "gateway"
max-conns = 5000
transparent = true
connect-timeout = "3s"
deny = "10.0.0.0/8"
`
	cmd := runCmd(untouchable(t))
	if err := cmd.ParseFlags([]string{"--role", "terminal"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(cmd.Flags(), writeConfig(t, good, 0o600)); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"iface": "[eth0,eth1]", "role": "terminal", "max-conns": "5000", "transparent": "true",
		"connect-timeout": "3s", "deny": "[10.0.0.0/8]",
	} {
		if got := cmd.Flags().Lookup(name).Value.String(); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	for _, c := range []struct{ text, want string }{
		{"bogus = 1\n", `unknown key "bogus"`},
		{"config = \"/x\"\n", `unknown key "config"`},
		{"role = [\"gateway\", \"terminal\"]\n", `key "role" takes one value, not a list`},
		{"[tables]\nkey = 1\n", `unknown key "tables"`},
		{"[peer]\nkey = 1\n", `key "peer": a map[string]interface {} is not`},
		{"listen-port = \"many\"\n", `key "listen-port"`},
		{"iface = [{a = 1}]\n", `key "iface": a map[string]interface {} is not`},
		{"role = \n", "config "},
	} {
		err := applyConfig(runCmd(untouchable(t)).Flags(), writeConfig(t, c.text, 0o600))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "config /") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v; want one line with %q", c.text, err, c.want)
		}
	}
	if err := applyConfig(runCmd(untouchable(t)).Flags(), writeConfig(t, good, 0o620)); err == nil || !strings.Contains(err.Error(), "group or others may write it") {
		t.Errorf("group-writable: %v", err)
	}
	if err := applyConfig(runCmd(untouchable(t)).Flags(), "/nonexistent/pepsal.toml"); err == nil {
		t.Error("an explicit --config that does not exist was accepted")
	}
	defer func(old string) { defaultConfig = old }(defaultConfig)
	defaultConfig = "/nonexistent/pepsal.toml"
	if err := applyConfig(runCmd(untouchable(t)).Flags(), ""); err != nil {
		t.Errorf("no file at the default path: %v", err)
	}
}

// TestConfigReadmeExample: README's example file is one pepsal run takes.
func TestConfigReadmeExample(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("config files must be root's: run as root")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(string(readme), "**Configuration file and reload.**")
	_, block, ok := strings.Cut(after, "```toml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("README has no example config file")
	}
	cmd := runCmd(untouchable(t))
	if err := applyConfig(cmd.Flags(), writeConfig(t, block, 0o600)); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Flags().Lookup("exclude").Value.String(); got != "[10.0.0.0/8,192.168.0.0/16]" {
		t.Errorf("exclude = %s", got)
	}
}
