// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// `make demo` shows README's headline in one run: over the same emulated GEO
// link, no proxy, pepsal on the gateway alone, and pepsal at both ends of the
// link with warm paths; downloads, then page loads in Chromium.

// DemoTransfers are what `make demo` downloads: the sizes of README's headline.
var DemoTransfers = []Transfer{{"100 KB", 100e3, false}, {"1 MB", 1e6, false}, {"10 MB", 10e6, false}}

// demoRelay is the relay of the demo's pepsal rows: the default one.
const demoRelay = "splice"

// demoConfig is cfg for the demo: one relay, no reference, and the router
// of the gateway-PEP bed on the gateway presets (unless PEPSAL_BENCH_ARGS
// says otherwise); the two-PEP bed keeps its defaults, roles and warm paths.
func demoConfig(cfg Config) Config {
	cfg.Relays = []string{demoRelay}
	cfg.ReferenceBin = ""
	if cfg.RouterArgs == nil {
		cfg.RouterArgs = []string{"--role", "gateway"}
	}
	return cfg
}

// demoSpecs are the demo's download beds: the gateway-PEP bed without and
// with pepsal, and the two-PEP bed with pepsal only (its routed baseline
// would be the same link again, and the machine has two CPUs).
func demoSpecs() []Spec {
	pep := Mode{Name: "pepsal " + demoRelay, Relay: demoRelay}
	return []Spec{
		{Profile: "geo", Topo: Gateway, Transfers: DemoTransfers, Modes: []Mode{NoProxy, pep}},
		{Profile: "geo", Topo: TwoPEP, Transfers: DemoTransfers, Modes: []Mode{pep}},
	}
}

// RunDemo downloads over the emulated GEO link without pepsal, with pepsal on
// the gateway and with pepsal at both ends, all three beds measured at the
// same time, and writes one table to w.
func RunDemo(ctx context.Context, cfg Config, w io.Writer, log *slog.Logger) error {
	cfg = demoConfig(cfg)
	specs := demoSpecs()
	l, err := specs[0].link()
	if err != nil {
		return err
	}
	fmt.Fprint(w, demoIntro(cfg, *l, specs[1].modes(cfg)[0].Name))
	res, err := runSatellite(ctx, cfg, specs, "pd", log)
	if err != nil {
		return err
	}
	t, err := demoTable(res)
	if err != nil {
		return err
	}
	fmt.Fprint(w, t.Markdown())
	return nil
}

// demoIntro says what the three rows run; twoName is the two-PEP row's name.
func demoIntro(cfg Config, l linkemu.Link, twoName string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pepsal demo: emulated GEO satellite link (%s). Server TCP: %s. Times: %s.\n\n", DescribeLink(l), cfg.ServerCC, medianOf(cfg.Runs))
	fmt.Fprintf(&b, "Downloads, three test beds measured side by side:\n")
	fmt.Fprintf(&b, "- without pepsal: client -- link -- router -- server, the router only routes;\n")
	fmt.Fprintf(&b, "- pepsal on the gateway: %s, `pepsal run --iface %s --relay %s %s`;\n",
		topoPicture(Gateway), testbed.RouterClientIf, demoRelay, strings.Trim(cfg.describeArgs(cfg.argsFor("router")), "`"))
	term := strings.Trim(cfg.describeArgs(cfg.argsFor("terminal")), "`")
	gw := strings.Trim(cfg.describeArgs(cfg.argsFor("gateway")), "`")
	fmt.Fprintf(&b, "- pepsal at both ends%s: %s, `pepsal run --iface %s --relay %s %s` and `pepsal run --iface %s --relay %s %s`",
		strings.TrimPrefix(twoName, "pepsal "+demoRelay), topoPicture(TwoPEP),
		testbed.TerminalClientIf, demoRelay, term, testbed.GatewayLinkIf, demoRelay, gw)
	if cfg.PeerKey != "" && strings.Contains(term+gw, "KEY") {
		b.WriteString(" (KEY: 32 random bytes the demo writes to a private temporary file)")
	}
	if strings.HasSuffix(twoName, warmLabel) {
		b.WriteString(": the terminal keeps a pool of connections open to the gateway and sends each new connection " +
			"over one, so that no handshake crosses the link")
	}
	b.WriteString(".\n\n")
	return b.String()
}

// demoTable puts the demo's three rows side by side: one line per download,
// one column per row, speed-ups over no proxy.
func demoTable(res []*SpecResult) (Table, error) {
	if len(res) != 2 || res[0] == nil || res[1] == nil || len(res[0].Rows) != 2 || len(res[1].Rows) != 1 {
		return Table{}, errors.New("demo: missing a row")
	}
	base, gw, two := res[0].Rows[0], res[0].Rows[1], res[1].Rows[0]
	for _, r := range []*Row{gw, two} {
		if r.Unavailable != "" {
			return Table{}, fmt.Errorf("%s did not start: %s", r.Mode.Name, r.Unavailable)
		}
	}
	twoHead := "pepsal at both ends"
	if strings.HasSuffix(two.Mode.Name, warmLabel) {
		twoHead += warmLabel
	}
	t := Table{Header: []string{"download", "without pepsal", "pepsal on the gateway", twoHead}}
	limit := res[0].Timeout.Seconds()
	cellOf := func(r *Row, col string) (float64, string) {
		m := Median(r.Samples[col])
		s := FormatSeconds(m)
		if math.IsInf(m, 1) {
			s = "> " + FormatSeconds(limit)
		}
		if n := len(r.Errors[col]); n > 0 {
			s += fmt.Sprintf(" (%d failed)", n)
			t.Notes = append(t.Notes, fmt.Sprintf("%s, %s: %s", r.Mode.Name, col, r.Errors[col][0]))
		}
		return m, s
	}
	for _, col := range res[0].Spec.columns() {
		bm, bs := cellOf(base, col)
		line := []string{col, bs}
		for _, r := range []*Row{gw, two} {
			m, s := cellOf(r, col)
			if sp := FormatSpeedup(bm, m, limit); sp != "" {
				s += " " + sp
			}
			line = append(line, s)
		}
		t.Rows = append(t.Rows, line)
	}
	for _, r := range []*Row{gw, two} {
		for _, site := range slices.Sorted(maps.Keys(r.Split)) {
			t.Notes = append(t.Notes, fmt.Sprintf("pepsal at the %s split %d of %d connections", site, r.Split[site], r.Connections))
		}
	}
	if twoHead != "pepsal at both ends" && two.Split != nil {
		t.Notes = append(t.Notes, fmt.Sprintf("%d of %d connections rode a warm path", two.Warm, two.Connections))
	}
	for i, r := range []*Row{base, gw, two} {
		if n := latenessNote(r, res[min(i, 1)].Spec); n != "" {
			t.Notes = append(t.Notes, n)
		}
	}
	return t, nil
}

// RunWebDemo loads the page over GEO without pepsal, with pepsal on the
// gateway and with pepsal at both ends, HTTP/1.1 and HTTP/2, and prints the
// table.
func RunWebDemo(ctx context.Context, cfg Config, w io.Writer, log *slog.Logger) error {
	cfg = demoConfig(cfg)
	two := "at both ends (`--role terminal` and `--role gateway`)"
	if hasWarmPaths(cfg.webTwoArgs("terminal")) {
		two = "at both ends with warm paths (`--role terminal --peer` and `--role gateway --peer-listen`, the same key)"
	}
	fmt.Fprintf(w, "\nPage loads in headless Chromium over the same GEO link: a 2 MB page of 70 sub-resources on 3 origins (nginx), "+
		"without pepsal, with `pepsal run --relay %s --role gateway` on the router, and with pepsal %s. "+
		"One load at a time; times: %s.\n\n", demoRelay, two, strings.Replace(medianOf(cfg.Runs), "run", "load", 1))
	res, err := runWeb(ctx, cfg, []string{"geo"}, []webKind{webNone, webPepsal, webTwo}, log)
	if err != nil {
		return err
	}
	for _, t := range res.Tables {
		for _, r := range t.Rows {
			if r.Unavailable != "" {
				return fmt.Errorf("%s: %s", r.Mode.Name, r.Unavailable)
			}
		}
		fmt.Fprint(w, t.Table().Markdown())
	}
	fmt.Fprintf(w, "(%s, %s)\n", res.Browser, res.Nginx)
	return nil
}
