// SPDX-License-Identifier: Apache-2.0

// Package enum gives the values of pepsal's small enums (outcome, relay
// state, relay mode, role) their texts: one list per enum serves String
// and UnmarshalText, so that the two cannot drift apart.
//
// It holds no state and imports no pepsal package.
package enum

import "fmt"

// Names are the texts of an enum's values, in value order.
type Names []string

// Of is v's text; a value past the list prints as what(v).
func (n Names) Of(v uint8, what string) string {
	if int(v) < len(n) {
		return n[v]
	}
	return fmt.Sprintf("%s(%d)", what, v)
}

// Parse sets *dst to the value whose text is text. An unknown text leaves
// *dst as it was and returns bad(text).
func Parse[T ~uint8](dst *T, n Names, text []byte, bad func(text []byte) error) error {
	for v, s := range n {
		if s == string(text) {
			*dst = T(v)
			return nil
		}
	}
	return bad(text)
}
