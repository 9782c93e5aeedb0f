// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// errSizeTooLarge: a size past 2^64-1 bytes.
var errSizeTooLarge = errors.New("too large")

// parseSize reads a byte count: 65536, 64KiB, 4MiB, 1GiB (K, M, G are
// binary too), or in decimal units: 64kB, 4MB, 1GB (KB too).
// A count that does not fit in 64 bits is refused, never wrapped around
// ("17179869184GiB" once read as 0).
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, errSizeTooLarge
	}
	if err != nil {
		return 0, err
	}
	if hi, lo := bits.Mul64(n, mult); hi == 0 {
		return lo, nil
	}
	return 0, errSizeTooLarge
}

// sizeFlagErr is the error of a size flag: "--relay-budget 17179869185GiB:
// too large", or "bad --relay-budget "1KiB": want ..." for anything else.
func sizeFlagErr(flag, value string, err error, want string) error {
	if errors.Is(err, errSizeTooLarge) {
		return fmt.Errorf("--%s %s: %w", flag, value, err)
	}
	return fmt.Errorf("bad --%s %q: %s", flag, value, want)
}
