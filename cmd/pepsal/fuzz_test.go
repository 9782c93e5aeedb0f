// SPDX-License-Identifier: Apache-2.0

package main

import (
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The fuzz targets of the flags an operator types: --ports, --exclude (and
// --deny, the same parser), the sizes. `make fuzz-short` runs each briefly,
// `make fuzz` long; their seeds run with the unit tests.

// formatPorts is the canonical text of a port list, as parsePorts reads it:
// runs of consecutive ports as ranges, in the list's order.
func formatPorts(ports []uint16) string {
	var items []string
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1] == ports[j]+1 {
			j++
		}
		item := strconv.Itoa(int(ports[i]))
		if j > i {
			item += "-" + strconv.Itoa(int(ports[j]))
		}
		items = append(items, item)
		i = j + 1
	}
	return strings.Join(items, ",")
}

// FuzzParsePorts: an accepted --ports is a list of distinct ports 1-65535
// whose canonical text parses back to the same list (order kept), and
// whose text is a fixed point.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "all", "80", "80,443", " 8000-8002 ", "22,20-22", "65535", "1-65535",
		"0", "65536", "http", "80,", "9-1", "1-2-3", "-5", "+80", "080", " 80 - 90 ", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 256 {
			return // each range costs up to 65535 steps: long lists only slow the fuzzer
		}
		ports, err := parsePorts(s)
		if err != nil {
			return
		}
		seen := map[uint16]bool{}
		for _, p := range ports {
			if p == 0 || seen[p] {
				t.Fatalf("parsePorts(%q) = %v: port 0 or a duplicate", s, ports)
			}
			seen[p] = true
		}
		text := formatPorts(ports)
		again, err := parsePorts(text)
		if err != nil || !slices.Equal(again, ports) {
			t.Fatalf("parsePorts(%q) = %v, its text %q parses to %v, %v", s, ports, text, again, err)
		}
		if formatPorts(again) != text {
			t.Fatalf("text of %q not stable: %q, then %q", s, text, formatPorts(again))
		}
	})
}

// FuzzParsePrefix: an accepted --exclude (or --deny) is a valid, masked
// prefix without a zone whose text parses back to itself; a CIDR that
// netip reads is accepted as its masked prefix, an address as its host.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.1.2.3/8", "192.0.2.1", "2001:db8::1", "fd00::/8", "10.0.0.0/33", "banana",
		"10.0.0/8", "", "fe80::1%eth0", "::ffff:10.0.0.0/104", "::ffff:1.2.3.4", "0.0.0.0/0", "::/0", "1.2.3.4/-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePrefix(s)
		if want, perr := netip.ParsePrefix(s); perr == nil && (err != nil || p != want.Masked()) {
			t.Fatalf("parsePrefix(%q) = %v, %v; want %v", s, p, err, want.Masked())
		}
		if a, aerr := netip.ParseAddr(s); aerr == nil && (err != nil || p.Addr() != a.WithZone("") || p.Bits() != a.BitLen()) {
			t.Fatalf("parsePrefix(%q) = %v, %v; want the host %v", s, p, err, a)
		}
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
			t.Fatalf("parsePrefix(%q) = %v: invalid, unmasked or zoned", s, p)
		}
		again, err := parsePrefix(p.String())
		if err != nil || again != p {
			t.Fatalf("parsePrefix(%q) = %v, its text parses to %v, %v", s, p, again, err)
		}
	})
}

// bigSize is what parseSize should read, by math/big: the value of s
// (the suffixes parseSize knows), or nil when s is not a size.
func bigSize(s string) *big.Int {
	s = strings.TrimSpace(s)
	shift := uint(0)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"K", 10}, {"M", 20}, {"G", 30}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, shift = rest, u.shift
			break
		}
	}
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return nil
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil
	}
	return n.Lsh(n, shift)
}

// formatSize is the shortest canonical text of n: the largest binary unit
// that divides it.
func formatSize(n uint64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatUint(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}

// FuzzParseSize: parseSize accepts exactly the sizes that fit in 64 bits,
// with math/big's value (never wrapped around); its text parses back to
// the same size; the flags built on it (--offload-after, --relay-budget)
// are never negative and within their bounds.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"65536", "64KiB", "4MiB", "1GiB", "8M", "2G", "0", " 1K ", "K", "-1", "+5", "1.5MiB",
		"18446744073709551615", "18446744073709551616", "17179869184GiB", "18014398509481985K", "1 KiB", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		want := bigSize(s)
		fits := want != nil && want.IsUint64()
		switch {
		case err == nil && !fits:
			t.Fatalf("parseSize(%q) = %d; want it refused (math/big: %v)", s, n, want)
		case err != nil && fits:
			t.Fatalf("parseSize(%q) refused (%v); math/big reads %v", s, err, want)
		case err != nil:
			return
		case want.Uint64() != n:
			t.Fatalf("parseSize(%q) = %d, math/big: %v", s, n, want)
		}
		text := formatSize(n)
		if again, err := parseSize(text); err != nil || again != n {
			t.Fatalf("parseSize(%q) = %d, its text %q parses to %d, %v", s, n, text, again, err)
		}
		rs, err := (&relayFlags{mode: "splice", offloadAfter: s, budget: s}).settings()
		if err != nil {
			return
		}
		if rs.offloadAfter < 0 || uint64(rs.offloadAfter) != n || rs.budget != n || n > 1<<40 || n < 64<<10 {
			t.Fatalf("relay flags %q: offload after %d, budget %d (size %d)", s, rs.offloadAfter, rs.budget, n)
		}
	})
}
