// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"testing"
)

// TestParseSize: sizes with and without a unit; a count or a product past
// 2^64-1 is too large, never wrapped around (17179869185GiB is 2^64 + 1GiB,
// which a wrapping multiplication reads as 1GiB).
func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		err  error // nil: accepted; errSizeTooLarge; errBadSize: anything else
	}{
		{"65536", 65536, nil},
		{" 64KiB ", 64 << 10, nil},
		{"4MiB", 4 << 20, nil},
		{"1GiB", 1 << 30, nil},
		{"2G", 2 << 30, nil},
		{"64kB", 64000, nil},
		{"64KB", 64000, nil},
		{"4MB", 4e6, nil},
		{"1GB", 1e9, nil},
		{"18446744073GB", 18446744073e9, nil},
		{"18446744074GB", 0, errSizeTooLarge},
		{"4mb", 0, errBadSize},
		{"MB", 0, errBadSize},
		{"0", 0, nil},
		{"18446744073709551615", 1<<64 - 1, nil},
		{"17179869183GiB", 1<<64 - 1<<30, nil},
		{"17179869184GiB", 0, errSizeTooLarge},
		{"17179869185GiB", 0, errSizeTooLarge},
		{"18014398509481984K", 0, errSizeTooLarge},
		{"18446744073709551616", 0, errSizeTooLarge},
		{"99999999999999999999999MiB", 0, errSizeTooLarge},
		{"lots", 0, errBadSize},
		{"-1", 0, errBadSize},
		{"KiB", 0, errBadSize},
		{"", 0, errBadSize},
	} {
		got, err := parseSize(c.in)
		switch {
		case c.err == nil && (err != nil || got != c.want):
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		case c.err == errSizeTooLarge && !errors.Is(err, errSizeTooLarge):
			t.Errorf("parseSize(%q) = %d, %v; want too large", c.in, got, err)
		case c.err == errBadSize && (err == nil || errors.Is(err, errSizeTooLarge)):
			t.Errorf("parseSize(%q) = %d, %v; want a bad size", c.in, got, err)
		}
	}
}

// errBadSize marks the cases that must fail for another reason than size.
var errBadSize = errors.New("not a size")
