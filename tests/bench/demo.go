// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
)

// DemoTransfers are what `make demo` downloads.
var DemoTransfers = []Transfer{{"1 MB", 1e6, false}, {"10 MB", 10e6, false}}

// RunDemo downloads over the emulated GEO link without and with pepsal
// (splice relay, cfg.ExtraArgs, by default the gateway role: pepsal sits on
// the ground side of the link, as in this bed) and writes a before/after table to w.
func RunDemo(ctx context.Context, cfg Config, w io.Writer, log *slog.Logger) error {
	cfg.Relays = []string{"splice"}
	if len(cfg.ExtraArgs) == 0 {
		cfg.ExtraArgs = []string{"--role", "gateway"}
	}
	cfg.ReferenceBin = ""
	spec := Spec{Profile: "geo", Topo: Gateway, Transfers: DemoTransfers}
	l, err := spec.link()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "pepsal demo: emulated GEO satellite link (%s), %s.\n", DescribeLink(*l), topoPicture(Gateway))
	fmt.Fprintf(w, "Two identical test beds measured side by side: one only routes, the other runs\n"+
		"`pepsal run --iface r-cli --relay splice%s` on the router. Server TCP: %s. %d run(s), median.\n\n",
		strings.TrimRight(" "+strings.Join(cfg.ExtraArgs, " "), " "), cfg.ServerCC, cfg.Runs)
	res, err := RunSpec(ctx, cfg, spec, "pd", log)
	if err != nil {
		return err
	}
	var base, pep *Row
	for _, r := range res.Rows {
		if r.Mode.Proxied() {
			pep = r
		} else {
			base = r
		}
	}
	if pep == nil || base == nil {
		return fmt.Errorf("demo: missing a row")
	}
	if pep.Unavailable != "" {
		return fmt.Errorf("pepsal did not start: %s", pep.Unavailable)
	}
	t := Table{Header: []string{"download", "without pepsal", "with pepsal", "speed-up"}}
	limit := cfg.Timeout.Seconds()
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
	for _, col := range spec.columns() {
		bm, bs := cellOf(base, col)
		pm, ps := cellOf(pep, col)
		t.Rows = append(t.Rows, []string{col, bs, ps, FormatSpeedup(bm, pm, limit)})
	}
	for _, site := range slices.Sorted(maps.Keys(pep.Split)) {
		n := pep.Split[site]
		t.Notes = append(t.Notes, fmt.Sprintf("pepsal at the %s split %d of %d connections", site, n, pep.Connections))
	}
	fmt.Fprint(w, t.Markdown())
	return nil
}
