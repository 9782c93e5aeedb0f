// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
)

// notRun starts the reason of a reference peer's row when the peer is not
// there to run (no ../shared/reference, no binary).
const notRun = "not run: "

// Table renders medians with the speed-up over "no proxy".
func (t *WebTable) Table() Table {
	tab := Table{Title: fmt.Sprintf("### %s, page load in Chromium (%s)", t.Profile, strings.Replace(medianOf(t.Runs), "run", "load", 1))}
	if l, err := linkemu.Profile(t.Profile); err == nil {
		tab.Title += "\n\n" + DescribeLink(l)
	}
	tab.Header = []string{"mode"}
	for _, p := range WebProtos {
		tab.Header = append(tab.Header, p.Label+" load", p.Label+" first byte")
	}
	var base *WebRow
	for _, r := range t.Rows {
		if r.Mode.Kind == webNone && r.Unavailable == "" {
			base = r
		}
	}
	limit := t.Timeout.Seconds()
	timeouts := false
	for _, r := range t.Rows {
		line := []string{r.Mode.Name}
		if r.Unavailable != "" {
			line, note := r.unavailable(len(tab.Header) - 1)
			tab.Rows = append(tab.Rows, line)
			tab.Notes = append(tab.Notes, note)
			continue
		}
		for _, p := range WebProtos {
			m := Median(r.Load[p.Label])
			cell := FormatSeconds(m)
			if math.IsInf(m, 1) {
				cell = "> " + FormatSeconds(limit)
			}
			for _, s := range r.Load[p.Label] {
				timeouts = timeouts || math.IsInf(s, 1)
			}
			if base != nil && r != base {
				if sp := FormatSpeedup(Median(base.Load[p.Label]), m, limit); sp != "" {
					cell += " " + sp
				}
			}
			if n := len(r.Errors[p.Label]); n > 0 {
				cell += fmt.Sprintf(" (%d failed)", n)
				tab.Notes = append(tab.Notes, fmt.Sprintf("%s, %s: %d of %d loads failed, e.g. %s",
					r.Mode.Name, p.Label, n, n+len(r.Load[p.Label]), r.Errors[p.Label][0]))
			}
			line = append(line, cell, FormatSeconds(Median(r.TTFB[p.Label])))
		}
		tab.Rows = append(tab.Rows, line)
		if r.KeepFailed > 0 {
			tab.Notes = append(tab.Notes, fmt.Sprintf("%s: %d keep-alive requests through the tunnel failed", r.Mode.Name, r.KeepFailed))
		}
		for site, n := range r.Split {
			if n == 0 {
				tab.Notes = append(tab.Notes, fmt.Sprintf("%s: pepsal at the %s split no connection", r.Mode.Name, site))
			}
		}
		if strings.HasSuffix(r.Mode.Name, warmLabel) && r.Split != nil && r.Warm == 0 {
			tab.Notes = append(tab.Notes, fmt.Sprintf("%s: no connection rode a warm path", r.Mode.Name))
		}
	}
	tolerance := 10 * time.Millisecond
	if l, err := linkemu.Profile(t.Profile); err == nil {
		tolerance = max(tolerance, min(l.Down.Delay, l.Up.Delay)/10)
	}
	for _, r := range t.Rows {
		if r.MaxLate > tolerance || r.KernelDrops > 0 {
			tab.Notes = append(tab.Notes, fmt.Sprintf("%s: the link emulator released a frame up to %s late and its sockets dropped %d frames (busy machine): delays were not exact",
				r.Mode.Name, r.MaxLate.Round(time.Millisecond), r.KernelDrops))
		}
	}
	if timeouts {
		tab.Notes = append(tab.Notes, fmt.Sprintf("a load without its load event after %s is stopped and counts as longer than that in the median", t.Timeout))
	}
	return tab
}

// unavailable is the line and the note of a row that did not run: a
// reference peer that was not there is "not run", one that did not start
// "unavailable".
func (r *WebRow) unavailable(cols int) (line []string, note string) {
	cell, note := "unavailable", fmt.Sprintf("%s unavailable: %s", r.Mode.Name, r.Unavailable)
	if strings.HasPrefix(r.Unavailable, notRun) {
		cell, note = "not run", r.Mode.Name+": "+r.Unavailable
	}
	line = []string{r.Mode.Name}
	for range cols {
		line = append(line, cell)
	}
	return line, note
}

// intro is the page-load section's text before its charts and tables: the
// page, the browser, the rows.
func (r *WebResult) intro() string {
	var b strings.Builder
	counts := map[string]int{}
	for _, res := range r.Page.Resources {
		counts[res.Kind]++
	}
	fmt.Fprintf(&b, "A synthetic page shaped like the HTTP Archive's median page: one %s document and %d sub-resources "+
		"(%d scripts, %d style sheets, %d images; %s in all, a few large, most small), on %d origins (three server "+
		"addresses, one nginx server block each), generated from a fixed seed (`tests/bench/webpage.go`). "+
		"Served by %s, loaded by %s (headless, a fresh profile per load: no cache, no session), over HTTP/1.1 "+
		"in clear and over HTTPS with HTTP/2. Load: `loadEventStart - navigationStart`, first byte: "+
		"`responseStart - navigationStart`, both from the browser's own Navigation Timing; a load counts only "+
		"if Resource Timing shows every sub-resource with its exact size over the expected protocol.\n\n",
		FormatBytes(pageHTML), len(r.Page.Resources), counts["js"], counts["css"], counts["img"],
		FormatBytes(r.Page.SubBytes()+pageHTML), pageOrigins, r.Nginx, r.Browser)
	warm := ""
	if r.Warm {
		warm = ", with warm paths: the terminal keeps a pool of connections open to the gateway (`--peer` and " +
			"`--peer-listen` with a pre-shared key) and the gateway takes data in SYNs from the " +
			"terminal's link (`--fastopen-from`)"
	}
	fmt.Fprintf(&b, "Rows: no proxy and *pepsal, gateway* (`--relay %s --role gateway` on the router) on the gateway-PEP bed; "+
		"*terminal + gateway* on the two-PEP bed (pepsal with `--role terminal` and `--role gateway`%s; or QPEP's client "+
		"and server). Reference peers built by the bench from `../shared/reference` into `%s`: %s, "+
		"TPROXY recipe, on the router; %s, client on the terminal (iptables REDIRECT), server on the gateway, "+
		"with a 1 kB request through its tunnel every second to keep its QUIC session alive (it dies after 2 s idle "+
		"and the next connection fails). Loads run one at a time, modes in a rotating order; profiles in parallel.\n\n",
		r.Relay, warm, defaultRefCache, RefPEPsalVersion, QPEPVersion)
	return b.String()
}
