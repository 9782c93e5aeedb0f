// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Table is a titled Markdown table with notes under it. Markdown reads well
// in a terminal too, so the same text goes to stdout and to BENCHMARKS.md.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	Notes  []string
}

// Markdown renders the table with padded columns: the first left-aligned
// (labels), the others right-aligned (numbers).
func (t Table) Markdown() string {
	cols := len(t.Header)
	for _, r := range t.Rows {
		cols = max(cols, len(r))
	}
	width := make([]int, cols)
	cell := func(r []string, i int) string {
		if i < len(r) {
			return r[i]
		}
		return ""
	}
	for _, r := range append([][]string{t.Header}, t.Rows...) {
		for i := range cols {
			width[i] = max(width[i], utf8.RuneCountInString(cell(r, i)), 3)
		}
	}
	var b strings.Builder
	if t.Title != "" {
		fmt.Fprintf(&b, "%s\n\n", t.Title)
	}
	line := func(r []string) {
		b.WriteString("|")
		for i := range cols {
			c := cell(r, i)
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(" " + c + pad + " |")
			} else {
				b.WriteString(" " + pad + c + " |")
			}
		}
		b.WriteString("\n")
	}
	line(t.Header)
	b.WriteString("|")
	for i := range cols {
		if i == 0 {
			b.WriteString(" " + strings.Repeat("-", width[i]) + " |")
		} else {
			b.WriteString(" " + strings.Repeat("-", width[i]-1) + ": |")
		}
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		line(r)
	}
	if len(t.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range t.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// FormatSeconds prints a time with three significant digits and a unit
// that fits: "5.12 s", "850 ms", "92.0 µs". +Inf is a time-out.
func FormatSeconds(s float64) string {
	switch {
	case math.IsNaN(s):
		return "-"
	case math.IsInf(s, 1):
		return "timeout"
	case s < 0:
		return "-"
	case s >= 1:
		return sig3(s) + " s"
	case s >= 1e-3:
		return sig3(s*1e3) + " ms"
	default:
		return sig3(s*1e6) + " µs"
	}
}

// FormatDuration is FormatSeconds for a time.Duration.
func FormatDuration(d time.Duration) string { return FormatSeconds(d.Seconds()) }

// FormatRate prints bits per second: "11.2 Gbit/s".
func FormatRate(bps float64) string {
	switch {
	case math.IsNaN(bps) || bps < 0:
		return "-"
	case bps >= 1e9:
		return sig3(bps/1e9) + " Gbit/s"
	case bps >= 1e6:
		return sig3(bps/1e6) + " Mbit/s"
	default:
		return sig3(bps/1e3) + " kbit/s"
	}
}

// FormatBytes prints a byte count in decimal units, signed (memory growth
// can be negative when something else frees memory meanwhile).
func FormatBytes(n int64) string {
	sign := ""
	f := float64(n)
	if n < 0 {
		sign, f = "-", -f
	}
	switch {
	case f >= 1e9:
		return sign + sig3(f/1e9) + " GB"
	case f >= 1e6:
		return sign + sig3(f/1e6) + " MB"
	case f >= 1e3:
		return sign + sig3(f/1e3) + " kB"
	default:
		return fmt.Sprintf("%s%.0f B", sign, f)
	}
}

// FormatSpeedup prints base/x, how many times faster x is than base (both
// times). +Inf stands for a time-out after limit seconds, which gives a bound.
func FormatSpeedup(base, x, limit float64) string {
	switch {
	case math.IsNaN(base) || math.IsNaN(x) || x <= 0 || base <= 0:
		return ""
	case math.IsInf(base, 1) && math.IsInf(x, 1):
		return ""
	case math.IsInf(x, 1):
		return fmt.Sprintf("x<%.2f", base/limit)
	case math.IsInf(base, 1):
		return fmt.Sprintf("x>%.2f", limit/x)
	}
	return fmt.Sprintf("x%.2f", base/x)
}

// sig3 prints three significant digits without exponent.
func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// latenessNote says when the link emulator of a row's bed was late. A late
// emulator adds delay that is not the link's; a few milliseconds on one
// frame out of thousands do not change a transfer time.
func latenessNote(row *Row, spec Spec) string {
	tolerance := 10 * time.Millisecond
	if l, err := spec.link(); err == nil && l != nil {
		tolerance = max(tolerance, min(l.Down.Delay, l.Up.Delay)/10)
	}
	if row.MaxLate <= tolerance && row.KernelDrops == 0 {
		return ""
	}
	return fmt.Sprintf("%s: the link emulator released a frame up to %s late and its sockets dropped %d frames (busy machine): delays were not exact",
		row.Mode.Name, row.MaxLate.Round(time.Millisecond), row.KernelDrops)
}
