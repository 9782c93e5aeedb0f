// SPDX-License-Identifier: Apache-2.0

package conn

import (
	"fmt"

	"github.com/pepsal/pepsal/userspace/internal/enum"
)

// parseInto sets *dst to the value whose text is text; on an error *dst
// is left as it was.
func parseInto[T ~uint8](dst *T, n enum.Names, text []byte, what string) error {
	return enum.Parse(dst, n, text, func(text []byte) error { return fmt.Errorf("unknown %s %q", what, text) })
}
