// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/peer"
)

// DEPLOYING.md's blocks are run or checked as printed, so that the page
// an operator follows on two fresh routers stays true.

// deployingBlock returns the fenced block of DEPLOYING.md that follows
// the comment <!-- marker -->.
func deployingBlock(t *testing.T, marker string) string {
	t.Helper()
	doc, err := os.ReadFile("../../DEPLOYING.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "<!-- "+marker+" -->\n")
	if !ok {
		t.Fatalf("DEPLOYING.md has no <!-- %s -->", marker)
	}
	_, block, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatalf("no block after <!-- %s -->", marker)
	}
	_, block, _ = strings.Cut(block, "\n") // the fence's info string
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("the block after <!-- %s --> does not end", marker)
	}
	return block
}

// TestDeployingNftables: both routers' rulesets pass `nft -c` (checked in
// a namespace of their own, nothing loaded).
func TestDeployingNftables(t *testing.T) {
	for _, m := range []string{"deploying-nft-terminal", "deploying-nft-gateway"} {
		ruleset := deployingBlock(t, m)
		if !strings.Contains(ruleset, "meta mark 0x5e9a1 accept") {
			t.Errorf("%s: no accept of the diverted connections' mark", m)
		}
		cmd := exec.Command("unshare", "--net", "nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(ruleset)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: nft -c: %v\n%s\n%s", m, err, out, ruleset)
		}
	}
}

// TestDeployingKeys runs the key commands as printed (with /etc/pepsal
// in a temporary directory): the gateway's ring holds both terminals, the
// terminal's file is site-1's line, every file is mode 600 in a 700
// directory, and pepsal loads them.
func TestDeployingKeys(t *testing.T) {
	root := t.TempDir()
	gw, term, carry := filepath.Join(root, "gw/pepsal"), filepath.Join(root, "term/pepsal"), filepath.Join(root, "carry")
	if err := os.Mkdir(carry, 0o700); err != nil {
		t.Fatal(err)
	}
	run := func(marker, etc, dir string) {
		block := strings.ReplaceAll(deployingBlock(t, marker), "/etc/pepsal", etc)
		cmd := exec.Command("sh", "-ec", block)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s\n%s", marker, err, out, block)
		}
	}
	run("deploying-keys-gateway", gw, root)
	site1, err := os.ReadFile(filepath.Join(gw, "site-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(carry, "site-1.key"), site1, 0o600); err != nil {
		t.Fatal(err)
	}
	run("deploying-keys-terminal", term, carry)

	for _, p := range []string{gw, term} {
		checkMode(t, p, 0o700|os.ModeDir)
	}
	for _, p := range []string{filepath.Join(gw, "terminals.keys"), filepath.Join(gw, "site-1.key"), filepath.Join(term, "peer.key")} {
		checkMode(t, p, 0o600)
	}
	ring, err := peer.LoadKeys(filepath.Join(gw, "terminals.keys"))
	if err != nil {
		t.Fatalf("the gateway's ring: %v", err)
	}
	if ids := strings.Join(ring.IDs(), " "); !ring.Ring || ids != "site-1 site-2" {
		t.Fatalf("the gateway's ring holds %q (ring %v), want site-1 site-2", ids, ring.Ring)
	}
	own, err := peer.LoadKeys(filepath.Join(term, "peer.key"))
	if err != nil {
		t.Fatalf("the terminal's key: %v", err)
	}
	k, err := own.Own()
	if err != nil {
		t.Fatalf("the terminal's key: %v", err)
	}
	want := ring.Lookup("site-1")
	if k.ID != "site-1" || !bytes.Equal(k.Key, want.Key) {
		t.Errorf("the terminal's key is %q, not site-1's line of the ring", k.ID)
	}
	if !want.AllowsClient(netip.MustParseAddr("10.1.2.3")) || want.AllowsClient(netip.MustParseAddr("10.2.0.1")) {
		t.Errorf("site-1's clients= %v: want 10.1.0.0/16", want.Clients)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode() & (os.ModeDir | os.ModePerm); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

// TestDeployingFirewall: the terminal's input chain as printed (its LAN
// interface renamed to the bed's), policy drop included, lets pepsal split;
// without its mark rule every diverted SYN is dropped on the input hook:
// the client's connection never opens, pepsal accepts nothing, and no SYN
// is forwarded unsplit instead.
func TestDeployingFirewall(t *testing.T) {
	b := newBed(t, defaultSuite())
	accepts := countingServer(t, b.Server)
	nft(t, b.Router, strings.ReplaceAll(deployingBlock(t, "deploying-nft-terminal"), `"lan0"`, `"`+testbed.RouterClientIf+`"`))
	b.startPepsal()
	for _, f := range families {
		if seen := echoes(t, b.Client, hostPort(f.server, openPort)); seen != f.routerServer {
			t.Errorf("%s: the server saw %s, want the router %s (split)", f.name, seen, f.routerServer)
		}
	}

	out, err := b.Router.Command("nft", "-a", "list", "chain", "inet", "filter", "input").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	handle := ""
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "meta mark 0x0005e9a1 accept") {
			_, handle, _ = strings.Cut(line, "# handle ")
		}
	}
	if handle == "" {
		t.Fatalf("no mark rule in\n%s", out)
	}
	if out, err := b.Router.Command("nft", "delete", "rule", "inet", "filter", "input", "handle", strings.TrimSpace(handle)).CombinedOutput(); err != nil {
		t.Fatalf("nft delete: %v\n%s", err, out)
	}
	before, served := b.daemonStatus(), accepts[openPort].Load()
	for _, f := range families {
		if c, err := dial(b.Client, hostPort(f.server, openPort), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("%s: a connection opened without the mark rule", f.name)
		}
	}
	after := b.daemonStatus()
	if got := after.Daemon.Stats.Accepted - before.Daemon.Stats.Accepted; got != 0 {
		t.Errorf("pepsal accepted %d connections whose SYNs the input hook drops", got)
	}
	if got := accepts[openPort].Load() - served; got != 0 {
		t.Errorf("the server accepted %d connections: SYNs forwarded unsplit", got)
	}
	if got := after.counter("syn_diverted") - before.counter("syn_diverted"); got < 2 {
		t.Errorf("syn_diverted grew by %d, want the dropped SYNs (at least one per family) diverted", got)
	}
}

// TestDeployingDropIn: systemd finds nothing to say about the unit with
// the page's LoadCredential= drop-in.
func TestDeployingDropIn(t *testing.T) {
	path := renderUnit(t)
	dropIn := filepath.Join(filepath.Dir(path), "pepsal.service.d")
	if err := os.Mkdir(dropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	block := deployingBlock(t, "deploying-dropin")
	if !strings.Contains(block, "LoadCredential=peer.key:/etc/pepsal/peer.key") {
		t.Fatalf("the drop-in lost its LoadCredential= line:\n%s", block)
	}
	if err := os.WriteFile(filepath.Join(dropIn, "override.conf"), []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", path)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+filepath.Dir(path)+":")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil || strings.TrimSpace(stderr.String()) != "" {
		t.Fatalf("systemd-analyze verify with the drop-in: %v\n%s", err, stderr.String())
	}
}

// TestDeployingCredentialKey: a key laid out as systemd lays out a
// LoadCredential= (exec-credential.c: a private directory on a read-only
// tmpfs, the file root's, mode 0400) is taken by a terminal run with the
// unit's capabilities only (no CAP_DAC_OVERRIDE), and the pool runs on it.
func TestDeployingCredentialKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pepsal.service")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mount := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v\n%s", args, err, out)
		}
	}
	mount("-t", "tmpfs", "-o", "mode=0700,size=1m", "tmpfs", dir)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	key := filepath.Join(dir, "peer.key")
	line := "site-1 " + strings.Repeat("k", 44) + "\n"
	if err := os.WriteFile(key, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o400); err != nil {
		t.Fatal(err)
	}
	mount("-o", "remount,ro", dir)

	cfg := defaultSuite()
	cfg.wrapper = setprivWith(serviceCaps(t))
	b := newBed(t, cfg)
	b.startPepsal("--iface", testbed.RouterClientIf, "--role", "terminal", "--peer", hostPort(testbed.ServerV4, 7700), "--peer-key", key)
	info := b.daemonInfo()
	if info.Peer == nil || info.Peer.Pool == nil {
		t.Fatalf("the terminal runs no pool: %+v", info.Peer)
	}
}
