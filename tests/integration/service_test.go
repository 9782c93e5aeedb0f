// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/tests/testbed"
)

const unitTemplate = "../../cmd/pepsal/systemd/pepsal.service.in"

// renderUnit writes the unit as `make install` would, for the test binary.
func renderUnit(t *testing.T) string {
	t.Helper()
	tmpl, err := os.ReadFile(unitTemplate)
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.NewReplacer("@BINDIR@", filepath.Dir(pepsalBin), "@SYSCONFDIR@", "/etc", "@DOCDIR@", "/usr/share/doc/pepsal").Replace(string(tmpl))
	if strings.Contains(unit, "@") {
		t.Fatalf("unit keeps a placeholder:\n%s", unit)
	}
	path := filepath.Join(t.TempDir(), "pepsal.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSystemdUnitVerifies: systemd itself finds nothing to say about the unit
// (it reports bad values on stderr and still exits 0, so both are checked).
func TestSystemdUnitVerifies(t *testing.T) {
	path := renderUnit(t)
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", path)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil || strings.TrimSpace(stderr.String()) != "" {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", path, err, stderr.String())
	}
}

// serviceCaps reads the unit's capability bounding set, as setpriv wants it.
func serviceCaps(t *testing.T) []string {
	t.Helper()
	tmpl, err := os.ReadFile(unitTemplate)
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, l := range strings.Split(string(tmpl), "\n") {
		if rest, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(rest) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("no CapabilityBoundingSet in the unit")
	}
	return caps
}

func setprivWith(caps []string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return []string{"setpriv", "--bounding-set=" + set, "--inh-caps=-all"}
}

// serviceChecks are the integration checks run with the daemon holding only
// the unit's capabilities: splitting, relaying both ways, half-close, reset,
// upstream failure, tuning by sock_ops, fast open (a sysctl), transparency,
// the CLI, and detaching at exit or after a crash.
var serviceChecks = []string{
	"SplitIsSeenByServer", "ConcurrentTransfersIntact", "HalfClose", "ResetPropagates",
	"UpstreamFailureResetsClient", "ConnsShowsConnection", "LegTuning", "TwoPEPFastOpen",
	"Transparent", "SIGTERMDetaches", "KilledDaemonFailsOpenAndDetachCleans",
}

// TestServiceCapabilities: the daemon works with exactly the unit's
// capabilities, in both relay modes, and each of them is needed: without it
// `pepsal run` fails at once with one line and leaves nothing behind
// (CAP_NET_RAW with warm paths, whose outage watch needs it).
func TestServiceCapabilities(t *testing.T) {
	caps := serviceCaps(t)
	forEachRelay(t, func(t *testing.T, cfg suite) {
		cfg.wrapper = setprivWith(caps)
		runSuite(t, cfg, serviceChecks)
	})
	for i, c := range caps {
		fewer := append(append([]string{}, caps[:i]...), caps[i+1:]...)
		t.Run("without_"+c, func(t *testing.T) {
			b := newBed(t, defaultSuite())
			before := netState(t, b.Router)
			args := append(setprivWith(fewer), pepsalBin, "run", "--iface", "r-cli", "--relay", "sockmap")
			if c == "net_raw" { // asked only for the warm paths' outage watch
				args = append(args, "--role", "gateway", "--peer-listen", hostPort(testbed.RouterClientV4, 7400), "--peer-key", writeKey(t, testKey(), 0o600))
			}
			r := runCmdIn(b.Router, args[0], args[1:]...)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "pepsal: ") {
				t.Errorf("run without CAP_%s: exit %d, stderr:\n%s", strings.ToUpper(c), r.code, r.stderr)
			}
			if after := netState(t, b.Router); after != before {
				t.Errorf("run without CAP_%s left traces:\n%s", strings.ToUpper(c), after)
			}
		})
	}
}

// TestMakeInstall: `make install` puts the binary, the unit (with the
// prefix's paths), the flags file (kept when it exists) and the docs under
// DESTDIR, and the unit it wrote verifies.
func TestMakeInstall(t *testing.T) {
	dest := t.TempDir()
	install := func() string {
		cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/usr")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
		return string(out)
	}
	install()
	for path, mode := range map[string]os.FileMode{
		"usr/bin/pepsal":                        0o755,
		"usr/lib/systemd/system/pepsal.service": 0o644,
		"etc/default/pepsal":                    0o644,
		"usr/share/doc/pepsal/README.md":        0o644,
		"usr/share/doc/pepsal/DEPLOYING.md":     0o644,
	} {
		st, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Fatalf("installed file: %v", err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/pepsal.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/bin/pepsal run $PEPSAL_ARGS", "EnvironmentFile=-/etc/default/pepsal"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	// The operator's flags survive a reinstall.
	flags := filepath.Join(dest, "etc/default/pepsal")
	if err := os.WriteFile(flags, []byte("PEPSAL_ARGS=\"--iface wan0\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if got, _ := os.ReadFile(flags); string(got) != "PEPSAL_ARGS=\"--iface wan0\"\n" {
		t.Errorf("reinstall overwrote the flags file: %q", got)
	}
	// systemd parses what was installed (pointed at the installed binary).
	local := strings.ReplaceAll(string(unit), "/usr/bin/pepsal", filepath.Join(dest, "usr/bin/pepsal"))
	path := filepath.Join(t.TempDir(), "pepsal.service")
	if err := os.WriteFile(path, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
	}
}
