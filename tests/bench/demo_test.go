// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/peer"
)

func join(a []string) string { return strings.Join(a, " ") }

// TestDefaultArgs: without the variables the two-PEP pepsals run the roles
// and warm paths under the bench's key, the router pepsal's defaults; a
// variable replaces the defaults of the sites it covers.
func TestDefaultArgs(t *testing.T) {
	c, err := ConfigFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !c.WarmPaths || c.ExtraArgs != nil || c.TerminalArgs != nil {
		t.Fatalf("defaults: warm %v, args %q, terminal %q", c.WarmPaths, c.ExtraArgs, c.TerminalArgs)
	}
	// Before the key is made: roles, fast open from the terminal's link only.
	if got := join(c.argsFor("gateway")); got != "--role gateway --fastopen-from 10.78.3.1 --fastopen-from fd78:3::1" {
		t.Errorf("gateway without a key: %q", got)
	}
	if got := join(c.argsFor("terminal")); got != "--role terminal" {
		t.Errorf("terminal without a key: %q", got)
	}
	c.PeerKey = "/tmp/k"
	for site, want := range map[string]string{
		"router":   "",
		"gateway":  "--role gateway --fastopen-from 10.78.3.1 --fastopen-from fd78:3::1 --peer-listen 10.78.3.2:7700 --peer-key /tmp/k",
		"terminal": "--role terminal --peer 10.78.3.2:7700 --peer-key /tmp/k",
	} {
		if got := join(c.argsFor(site)); got != want {
			t.Errorf("%s: %q, want %q", site, got, want)
		}
	}
	if got := join(c.webTwoArgs("terminal")); got != "--role terminal --peer 10.78.3.2:7700 --peer-key /tmp/k" {
		t.Errorf("page-load terminal: %q", got)
	}
	if !hasWarmPaths(c.argsFor("terminal")) || hasWarmPaths(c.argsFor("gateway")) || !hasWarmPaths([]string{"--peer=1.2.3.4:7"}) {
		t.Error("hasWarmPaths")
	}

	// The long command of earlier runs still means what it meant.
	c, err = ConfigFromEnv(env(map[string]string{
		"PEPSAL_BENCH_ARGS":          "--role gateway --peer-listen 0.0.0.0:7700 --peer-key K",
		"PEPSAL_BENCH_TERMINAL_ARGS": "--role terminal --peer 10.78.3.2:7700 --peer-key K",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c.PeerKey = "/tmp/k"
	if got := join(c.argsFor("router")); got != "--role gateway --peer-listen 0.0.0.0:7700 --peer-key K" {
		t.Errorf("router with PEPSAL_BENCH_ARGS: %q", got)
	}
	if got := join(c.argsFor("terminal")); got != "--role terminal --peer 10.78.3.2:7700 --peer-key K" {
		t.Errorf("terminal with PEPSAL_BENCH_TERMINAL_ARGS: %q", got)
	}
	if got := join(c.webTwoArgs("gateway")); got != "--role gateway --fastopen-from 10.78.3.1 --fastopen-from fd78:3::1 --role gateway --peer-listen 0.0.0.0:7700 --peer-key K" {
		t.Errorf("page-load gateway with PEPSAL_BENCH_ARGS: %q", got)
	}
	// The terminal's variable alone leaves the gateway its defaults.
	c, _ = ConfigFromEnv(env(map[string]string{"PEPSAL_BENCH_TERMINAL_ARGS": "--role terminal"}))
	c.PeerKey = "/tmp/k"
	if hasWarmPaths(c.argsFor("terminal")) || !strings.Contains(join(c.argsFor("gateway")), "--peer-listen") {
		t.Errorf("terminal %q, gateway %q", c.argsFor("terminal"), c.argsFor("gateway"))
	}

	if c, err := ConfigFromEnv(env(map[string]string{"PEPSAL_BENCH_WARM_PATHS": "0"})); err != nil || c.WarmPaths {
		t.Errorf("PEPSAL_BENCH_WARM_PATHS=0: %v, warm %v", err, c.WarmPaths)
	}
	if _, err := ConfigFromEnv(env(map[string]string{"PEPSAL_BENCH_WARM_PATHS": "sometimes"})); err == nil {
		t.Error("PEPSAL_BENCH_WARM_PATHS=sometimes accepted")
	}
}

// TestMakePeerKey: the key file is one pepsal loads, private, and gone after.
func TestMakePeerKey(t *testing.T) {
	c := Config{WarmPaths: true}
	remove, err := c.MakePeerKey()
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	st, err := os.Stat(c.PeerKey)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if dst, err := os.Stat(filepath.Dir(c.PeerKey)); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Errorf("directory: %v, %v", dst.Mode(), err)
	}
	keys, err := peer.LoadKeys(c.PeerKey)
	if err != nil || keys.Ring {
		t.Fatalf("LoadKeys: %+v, %v; want a single key", keys, err)
	}
	own, err := keys.Own()
	if err != nil || len(own.Key) < 32 {
		t.Fatalf("the key: %+v, %v", own, err)
	}
	key := own.Key
	d := Config{WarmPaths: true}
	removeD, err := d.MakePeerKey()
	if err != nil {
		t.Fatal(err)
	}
	defer removeD()
	if other, _ := os.ReadFile(d.PeerKey); string(other) == string(key) {
		t.Error("two runs made the same key")
	}
	remove()
	if _, err := os.Stat(filepath.Dir(c.PeerKey)); !os.IsNotExist(err) {
		t.Errorf("key directory left behind: %v", err)
	}

	off := Config{}
	if _, err := off.MakePeerKey(); err != nil || off.PeerKey != "" {
		t.Errorf("without warm paths: key %q, %v", off.PeerKey, err)
	}
}

// TestDemoRows: the demo measures no proxy and pepsal on the gateway on one
// bed, pepsal at both ends with warm paths on the other, and says so.
func TestDemoRows(t *testing.T) {
	c, _ := ConfigFromEnv(env(nil))
	c.PeerKey = "/tmp/pepsal-bench-key-1/peer.key"
	c = demoConfig(c)
	specs := demoSpecs()
	var names []string
	for _, s := range specs {
		if s.Profile != "geo" {
			t.Errorf("%s: want geo", s)
		}
		for _, m := range s.modes(c) {
			names = append(names, string(s.Topo)+": "+m.Name)
		}
	}
	if got := strings.Join(names, ", "); got != "gateway PEP: no proxy, gateway PEP: pepsal splice, two PEPs: pepsal splice, warm paths" {
		t.Errorf("rows: %s", got)
	}
	if got := join(c.argsFor("router")); got != "--role gateway" {
		t.Errorf("demo router: %q", got)
	}
	l, _ := specs[0].link()
	intro := demoIntro(c, *l, specs[1].modes(c)[0].Name)
	for _, want := range []string{"RTT 600ms", "pepsal on the gateway: client -- link -- router(PEP) -- server, `pepsal run --iface r-cli --relay splice --role gateway`",
		"pepsal at both ends, warm paths: client -- terminal(PEP)", "--role terminal --peer 10.78.3.2:7700 --peer-key KEY", "--peer-listen 10.78.3.2:7700 --peer-key KEY",
		"(KEY: 32 random bytes", "the terminal keeps a pool of connections open"} {
		if !strings.Contains(intro, want) {
			t.Errorf("intro lacks %q:\n%s", want, intro)
		}
	}
	if strings.Contains(intro, c.PeerKey) {
		t.Errorf("intro shows the key's path:\n%s", intro)
	}
	// PEPSAL_BENCH_WARM_PATHS=0: roles alone, and the demo does not speak of warm paths.
	off := c
	off.PeerKey = ""
	if intro := demoIntro(off, *l, specs[1].modes(off)[0].Name); strings.Contains(intro, "warm") || strings.Contains(intro, "KEY") ||
		!strings.Contains(intro, "pepsal at both ends: client -- terminal(PEP)") {
		t.Errorf("intro without warm paths:\n%s", intro)
	}
	// PEPSAL_BENCH_ARGS still wins on the router, and no key means no warm label.
	c.ExtraArgs, c.PeerKey = []string{"--x"}, ""
	if got := join(c.argsFor("router")); got != "--x" {
		t.Errorf("demo router with PEPSAL_BENCH_ARGS: %q", got)
	}
	if m := (Spec{Topo: TwoPEP, Modes: []Mode{NoProxy, {Name: "pepsal splice", Relay: "splice"}}}).modes(Config{}); m[1].Name != "pepsal splice" || m[0].Name != "no proxy" {
		t.Errorf("two PEPs without a key: %+v", m)
	}
}

func TestDemoTable(t *testing.T) {
	specs := demoSpecs()
	pep := specs[0].Modes[1]
	warm := specs[1].Modes[0]
	warm.Name += warmLabel
	res := []*SpecResult{
		{Spec: specs[0], Runs: 3, Timeout: 90 * time.Second, Rows: []*Row{
			{Mode: NoProxy, Samples: map[string][]float64{"100 KB": {2.43}, "1 MB": {4.85}, "10 MB": {8.84}, FirstByte: {1.2}}},
			{Mode: pep, Samples: map[string][]float64{"100 KB": {1.82}, "1 MB": {3.27}, "10 MB": {7.32}, FirstByte: {1.2}},
				Connections: 10, Split: map[string]uint64{"router": 10}},
		}},
		{Spec: specs[1], Runs: 3, Timeout: 90 * time.Second, Rows: []*Row{
			{Mode: warm, Samples: map[string][]float64{"100 KB": {0.64}, "1 MB": {1.02}, "10 MB": {4.79}, FirstByte: {0.6}},
				Connections: 10, Warm: 9, Split: map[string]uint64{"gateway": 1, "terminal": 10}, MaxLate: time.Second},
		}},
	}
	tab, err := demoTable(res)
	if err != nil {
		t.Fatal(err)
	}
	md := strings.Join(strings.Fields(tab.Markdown()), " ")
	for _, want := range []string{
		"| download | without pepsal | pepsal on the gateway | pepsal at both ends, warm paths |",
		"| 100 KB | 2.43 s | 1.82 s x1.34 | 640 ms x3.80 |",
		"| 10 MB | 8.84 s | 7.32 s x1.21 | 4.79 s x1.85 |",
		"| first byte | 1.20 s | 1.20 s x1.00 | 600 ms x2.00 |",
		"pepsal at the terminal split 10 of 10 connections",
		"9 of 10 connections rode a warm path",
		"pepsal splice, warm paths: the link emulator released a frame up to 1s late",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, tab.Markdown())
		}
	}
	res[1].Rows[0].Unavailable = "--peer-key: no such file"
	if _, err := demoTable(res); err == nil || !strings.Contains(err.Error(), "warm paths did not start: --peer-key") {
		t.Errorf("unavailable two-PEP row: %v", err)
	}
	if _, err := demoTable(res[:1]); err == nil {
		t.Error("a missing bed gave a table")
	}
}

// TestReportArgs: the report names what each site ran, the key as KEY, and
// its variables section shows the defaults the code uses.
func TestReportArgs(t *testing.T) {
	c, _ := ConfigFromEnv(env(nil))
	c.PeerKey = "/tmp/pepsal-bench-key-9/peer.key"
	md := Report(c, SystemInfo{}, Results{Elapsed: time.Minute})
	for _, want := range []string{
		"(none) on the router of the gateway-PEP bed",
		c.describeArgs(c.argsFor("terminal")) + " on the terminal",
		c.describeArgs(c.argsFor("gateway")) + " on the gateway of the two-PEP bed",
		"`PEPSAL_BENCH_WARM_PATHS`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The variables section quotes the defaults: keep it in step with the code.
	method := strings.Join(strings.Fields(md), " ")
	for _, site := range []string{"terminal", "gateway"} {
		if want := strings.Trim(c.describeArgs(c.argsFor(site)), "`"); !strings.Contains(method, "`"+want+"` on the "+site) {
			t.Errorf("variables section lacks %q on the %s", want, site)
		}
	}
	if strings.Contains(md, c.PeerKey) {
		t.Error("the report shows the key's temporary path")
	}
}

func TestWebModesWarm(t *testing.T) {
	if m := WebModes("splice", true); m[2].Name != "pepsal splice, terminal + gateway, warm paths" || m[2].Kind != webTwo || m[1].Name != "pepsal splice, gateway" {
		t.Errorf("warm: %+v", m)
	}
	if m := WebModes("splice", false); m[2].Name != "pepsal splice, terminal + gateway" {
		t.Errorf("without warm paths: %+v", m)
	}
}
