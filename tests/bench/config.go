// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
)

// Config is what a benchmark run measures and with what. ConfigFromEnv fills
// it from the PEPSAL_BENCH_* variables documented in BENCHMARKS.md.
type Config struct {
	Pepsal           string   // the pepsal binary
	Relays           []string // pepsal relay modes, one row each
	ExtraArgs        []string // PEPSAL_BENCH_ARGS: replace the defaults after `pepsal run --iface X --relay M`; nil: unset
	TerminalArgs     []string // for the terminal of the two-PEP topology instead of ExtraArgs; nil: unset
	RouterArgs       []string // the default of the router (gateway-PEP and plain beds): none in the bench
	WarmPaths        bool     // make a peer key (MakePeerKey) so that the two-PEP pepsals run warm paths
	PeerKey          string   // the key file of the warm paths; "": the two-PEP pepsals run roles alone
	ReferenceBin     string   // reference PEPsal binary; "" skips its row
	ReferenceMissing string   // why ReferenceBin is "" (EnsureReference), for the report
	ServerCC         string   // congestion control of the traffic server's sockets

	Runs           int
	Profiles       []string // link profiles of the gateway-PEP topology
	TwoPEPProfiles []string // link profiles of the two-PEP topology
	Timeout        time.Duration
	Parallel       int // satellite test beds measured at once per run phase; 0 = all
	Satellite      bool
	Efficiency     bool // the veth relay tests
	Memory         bool // the slow-connection memory test (part of efficiency)
	Web            bool // page loads in Chromium (web.go)

	StreamDuration time.Duration // each throughput measurement on plain veth
	EchoCount      int           // request/response round trips
	MemDuration    time.Duration // the slow-connection memory measurement
	Quick          bool
}

// Modes are the rows of every table: no proxy, each relay, the reference.
func (c Config) Modes() []Mode {
	ms := []Mode{NoProxy}
	for _, r := range c.Relays {
		ms = append(ms, Mode{Name: "pepsal " + r, Relay: r})
	}
	if c.ReferenceBin != "" {
		ms = append(ms, Mode{Name: "PEPsal 2.x (reference)", Reference: true})
	}
	return ms
}

// argsFor is what follows `pepsal run --iface IF --relay M` at site: the
// variables' arguments when set, else the defaults: RouterArgs on the router
// of the gateway-PEP and plain beds, roles and warm paths in the two-PEP bed
// ("gateway" and "terminal"), as README's headline measures them.
func (c Config) argsFor(site string) []string {
	if a, ok := c.override(site); ok {
		return a
	}
	if site == "router" {
		return c.RouterArgs
	}
	return append(twoPEPRoles(site), c.warmArgs(site)...)
}

// override is PEPSAL_BENCH_TERMINAL_ARGS (terminal) or PEPSAL_BENCH_ARGS; ok
// is false when the one that applies to site is unset.
func (c Config) override(site string) (args []string, ok bool) {
	if site == "terminal" && c.TerminalArgs != nil {
		return c.TerminalArgs, true
	}
	if c.ExtraArgs != nil {
		return c.ExtraArgs, true
	}
	return nil, false
}

// ConfigFromEnv reads the environment through lookupEnv (os.LookupEnv). An
// empty variable counts as unset, except PEPSAL_BENCH_TERMINAL_ARGS where
// empty means no arguments. Warm paths are on unless PEPSAL_BENCH_WARM_PATHS=0;
// the caller makes their key (MakePeerKey). PEPSAL_BENCH_QUICK=1 changes the defaults to a run
// of a few minutes; variables set explicitly still win.
func ConfigFromEnv(lookupEnv func(string) (string, bool)) (Config, error) {
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	c := Config{
		Relays:         []string{"splice", "sockmap"},
		ServerCC:       "cubic",
		Runs:           5,
		Profiles:       []string{"geo", "geo-lossy", "leo"},
		TwoPEPProfiles: []string{"geo", "geo-lossy"},
		Timeout:        90 * time.Second,
		Satellite:      true,
		Efficiency:     true,
		Memory:         true,
		Web:            true,
		WarmPaths:      true,
		StreamDuration: 5 * time.Second,
		EchoCount:      5000,
		MemDuration:    20 * time.Second,
	}
	if b, err := boolEnv(getenv, "PEPSAL_BENCH_QUICK"); err != nil {
		return c, err
	} else if b {
		c.quick()
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_RELAYS"); ok {
		c.Relays = strings.Fields(v)
	}
	for _, r := range c.Relays {
		if r == "" || strings.HasPrefix(r, "-") {
			return c, fmt.Errorf("PEPSAL_BENCH_RELAYS: bad relay %q", r)
		}
	}
	if err := c.pepsalArgsFromEnv(lookupEnv); err != nil {
		return c, err
	}
	c.ReferenceBin = strings.TrimSpace(getenv("PEPSAL_REFERENCE_BIN"))
	if v, ok := lookup(getenv, "PEPSAL_BENCH_SERVER_CC"); ok {
		c.ServerCC = strings.TrimSpace(v)
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_RUNS"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 1000 {
			return c, fmt.Errorf("PEPSAL_BENCH_RUNS=%q: want a count of 1 to 1000", v)
		}
		c.Runs = n
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_PARALLEL"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return c, fmt.Errorf("PEPSAL_BENCH_PARALLEL=%q: want a count (0 = all)", v)
		}
		c.Parallel = n
	}
	var err error
	if v, ok := lookup(getenv, "PEPSAL_BENCH_PROFILES"); ok {
		if c.Profiles, err = profiles("PEPSAL_BENCH_PROFILES", v); err != nil {
			return c, err
		}
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_TWO_PEP_PROFILES"); ok {
		if c.TwoPEPProfiles, err = profiles("PEPSAL_BENCH_TWO_PEP_PROFILES", v); err != nil {
			return c, err
		}
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_TIMEOUT"); ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			return c, fmt.Errorf("PEPSAL_BENCH_TIMEOUT=%q: want a duration such as 90s", v)
		}
		c.Timeout = d
	}
	if v, ok := lookup(getenv, "PEPSAL_BENCH_PARTS"); ok {
		if err := c.parts(v); err != nil {
			return c, err
		}
	}
	return c, nil
}

// quick sets the defaults of PEPSAL_BENCH_QUICK=1: a run of a few minutes.
func (c *Config) quick() {
	c.Quick = true
	c.Runs = 1
	c.Profiles = []string{"geo"}
	c.TwoPEPProfiles = []string{"geo"}
	c.Timeout = 30 * time.Second
	c.StreamDuration = 2 * time.Second
	c.EchoCount = 1000
	c.MemDuration = 5 * time.Second
}

// parts reads PEPSAL_BENCH_PARTS.
func (c *Config) parts(v string) error {
	c.Satellite, c.Efficiency, c.Memory, c.Web = false, false, false, false
	for _, p := range strings.Fields(v) {
		switch p {
		case "satellite":
			c.Satellite = true
		case "efficiency":
			c.Efficiency, c.Memory = true, true
		case "veth":
			c.Efficiency = true
		case "web":
			c.Web = true
		default:
			return fmt.Errorf("PEPSAL_BENCH_PARTS: unknown part %q (want satellite, efficiency, veth, web)", p)
		}
	}
	return nil
}

// pepsalArgsFromEnv reads the variables of pepsal's arguments: an empty
// PEPSAL_BENCH_ARGS is unset, an empty PEPSAL_BENCH_TERMINAL_ARGS means none.
func (c *Config) pepsalArgsFromEnv(lookupEnv func(string) (string, bool)) error {
	if v, _ := lookupEnv("PEPSAL_BENCH_ARGS"); v != "" {
		c.ExtraArgs = append([]string{}, strings.Fields(v)...)
	}
	if v, ok := lookupEnv("PEPSAL_BENCH_TERMINAL_ARGS"); ok {
		c.TerminalArgs = append([]string{}, strings.Fields(v)...)
	}
	if v, _ := lookupEnv("PEPSAL_BENCH_WARM_PATHS"); strings.TrimSpace(v) != "" {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("PEPSAL_BENCH_WARM_PATHS=%q: want 1 or 0", v)
		}
		c.WarmPaths = b
	}
	return nil
}

func lookup(getenv func(string) string, key string) (string, bool) {
	v := getenv(key)
	return v, v != ""
}

func boolEnv(getenv func(string) string, key string) (bool, error) {
	v := strings.TrimSpace(getenv(key))
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want 1 or 0", key, v)
	}
	return b, nil
}

func profiles(key, v string) ([]string, error) {
	var out []string
	for _, p := range strings.Fields(v) {
		if _, err := linkemu.Profile(p); err != nil || p == "none" {
			return nil, fmt.Errorf("%s: unknown profile %q (want geo, geo-lossy, leo)", key, p)
		}
		out = append(out, p)
	}
	return out, nil
}
