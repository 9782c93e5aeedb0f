// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"math"
	"slices"
	"time"
)

// Percentile is the p-th percentile (0..100) of xs by linear interpolation
// between the closest ranks (the numpy default). NaN values (no measurement)
// are left out; NaN for no data.
func Percentile(xs []float64, p float64) float64 {
	s := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(s) == 0 || math.IsNaN(p) {
		return math.NaN()
	}
	slices.Sort(s) // +Inf (a timed-out run) sorts last, as it should
	p = min(max(p, 0), 100)
	pos := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	if lo == hi || s[lo] == s[hi] {
		return s[lo]
	}
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

// Median is the 50th percentile: the mean of the two middle values for an
// even count.
func Median(xs []float64) float64 { return Percentile(xs, 50) }

// Seconds converts durations for the statistics above.
func Seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}
