// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"reflect"
	"strings"
	"unicode"
)

// Counter is one named decision counter.
type Counter struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Counters sums the per-CPU counters, named as in bpf/pepsal.h.
func (a *Attachment) Counters() ([]Counter, error) {
	var perCPU []classifyCounters
	if err := a.maps.PepsalCounters.Lookup(uint32(0), &perCPU); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	var out []Counter
	t := reflect.TypeOf(classifyCounters{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		var sum uint64
		for _, c := range perCPU {
			sum += reflect.ValueOf(c).Field(i).Uint()
		}
		out = append(out, Counter{Name: snake(f.Name), Value: sum})
	}
	return out, nil
}

func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
