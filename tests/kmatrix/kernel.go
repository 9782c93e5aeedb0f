// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Kernel is one kernel of the matrix: a Debian package chosen by pattern
// (the newest matching name), or .deb files given by path.
type Kernel struct {
	Label   string         // the table's column, e.g. "6.1"
	Pattern *regexp.Regexp // package name, from Debian's archive
	Debs    []string       // or these files (a kernel Debian does not ship)
	About   string
}

// DefaultKernels: Debian 12's own kernel, the bookworm-backports kernel, and
// 6.18 from trixie-backports (the development machines' series).
var DefaultKernels = []Kernel{
	{Label: "6.1", Pattern: regexp.MustCompile(`^linux-image-6\.1\.0-[0-9]+-amd64$`), About: "Debian 12 (bookworm)'s own kernel"},
	{Label: "6.12", Pattern: regexp.MustCompile(`^linux-image-6\.12\.[0-9]+\+deb12-amd64$`), About: "bookworm-backports"},
	{Label: "6.18", Pattern: regexp.MustCompile(`^linux-image-6\.18\.[0-9]+\+deb13-amd64$`), About: "trixie-backports"},
}

// ParseKernels reads a comma-separated list: a default's label ("6.1"),
// LABEL=REGEXP (the newest Debian package whose name matches), or
// LABEL=FILE.deb[+FILE.deb...] (an image and its modules packages, e.g.
// Ubuntu's linux-image-unsigned-5.15.0-N-generic and linux-modules-5.15.0-N-generic).
func ParseKernels(list string) ([]Kernel, error) {
	var out []Kernel
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		label, spec, hasSpec := strings.Cut(item, "=")
		if !hasSpec {
			k, err := defaultKernel(label)
			if err != nil {
				return nil, err
			}
			out = append(out, k)
			continue
		}
		if label == "" || strings.ContainsAny(label, " /") {
			return nil, fmt.Errorf("kernel %q: want LABEL=PATTERN or LABEL=FILE.deb", item)
		}
		if strings.HasSuffix(spec, ".deb") {
			debs := strings.Split(spec, "+")
			for i, d := range debs {
				abs, err := filepath.Abs(d)
				if err != nil {
					return nil, err
				}
				if _, err := os.Stat(abs); err != nil {
					return nil, fmt.Errorf("kernel %s: %w", label, err)
				}
				debs[i] = abs
			}
			out = append(out, Kernel{Label: label, Debs: debs, About: "local packages"})
			continue
		}
		re, err := regexp.Compile(spec)
		if err != nil {
			return nil, fmt.Errorf("kernel %s: bad package pattern: %w", label, err)
		}
		out = append(out, Kernel{Label: label, Pattern: re, About: "Debian archive"})
	}
	if len(out) == 0 {
		return nil, errors.New("no kernel given")
	}
	seen := map[string]bool{}
	for _, k := range out {
		if seen[k.Label] {
			return nil, fmt.Errorf("kernel %s given twice", k.Label)
		}
		seen[k.Label] = true
	}
	return out, nil
}

func defaultKernel(label string) (Kernel, error) {
	var labels []string
	for _, k := range DefaultKernels {
		if k.Label == label {
			return k, nil
		}
		labels = append(labels, k.Label)
	}
	return Kernel{}, fmt.Errorf("unknown kernel %q: want one of %s, LABEL=PACKAGE-REGEXP or LABEL=FILE.deb", label, strings.Join(labels, ", "))
}

// Newest picks, among package names, the newest that matches: names are
// compared by their runs of digits as numbers (6.1.0-57 after 6.1.0-9).
func Newest(names []string, pattern *regexp.Regexp) (string, bool) {
	best := ""
	for _, n := range names {
		if pattern.MatchString(n) && (best == "" || versionLess(best, n)) {
			best = n
		}
	}
	return best, best != ""
}

var digitRuns = regexp.MustCompile(`[0-9]+|[^0-9]+`)

// versionLess compares two strings chunk by chunk, digit runs as numbers.
func versionLess(a, b string) bool {
	ca, cb := digitRuns.FindAllString(a, -1), digitRuns.FindAllString(b, -1)
	for i := 0; i < len(ca) && i < len(cb); i++ {
		x, y := ca[i], cb[i]
		if x == y {
			continue
		}
		if isDigits(x) && isDigits(y) {
			x, y = strings.TrimLeft(x, "0"), strings.TrimLeft(y, "0")
			if len(x) != len(y) {
				return len(x) < len(y)
			}
		}
		return x < y
	}
	return len(ca) < len(cb)
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}
