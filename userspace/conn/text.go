package conn

import "fmt"

// names are the texts of a small enum's values, in value order: one list
// serves String and UnmarshalText, so the two cannot drift apart.
type names []string

// of is v's text; a value past the list prints as what(v).
func (n names) of(v uint8, what string) string {
	if int(v) < len(n) {
		return n[v]
	}
	return fmt.Sprintf("%s(%d)", what, v)
}

// parse is the value whose text is text.
func (n names) parse(text []byte, what string) (uint8, error) {
	for v, s := range n {
		if s == string(text) {
			return uint8(v), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q", what, text)
}

// parseInto sets *dst to the value whose text is text; on an error *dst
// is left as it was.
func parseInto[T ~uint8](dst *T, n names, text []byte, what string) error {
	v, err := n.parse(text, what)
	if err == nil {
		*dst = T(v)
	}
	return err
}
