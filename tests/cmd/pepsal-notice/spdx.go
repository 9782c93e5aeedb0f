// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

var spdxLine = regexp.MustCompile(`(?m)SPDX-License-Identifier: (.+?)\s*(?:\*/)?$`)

// spdx is the licence each kind of source file declares in its first lines.
var spdx = map[string]string{
	".go": "Apache-2.0",
	".c":  "(GPL-2.0-only OR BSD-2-Clause)",
	".h":  "(GPL-2.0-only OR BSD-2-Clause)",
}

// checkSPDX finds the source files under root whose first lines do not
// carry their SPDX-License-Identifier. Generated files are left out: the
// generator writes them, and `make generate` must reproduce them exactly.
func checkSPDX(root string) error {
	var missing []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		want, ok := spdx[filepath.Ext(path)]
		if !ok {
			return nil
		}
		head, err := firstLines(path, 3)
		if err != nil {
			return err
		}
		if strings.Contains(head, "Code generated") {
			return nil
		}
		if m := spdxLine.FindStringSubmatch(head); m == nil || m[1] != want {
			rel, _ := filepath.Rel(root, path)
			missing = append(missing, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", root, err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%d source files lack their SPDX-License-Identifier line (.go: Apache-2.0; bpf: GPL-2.0-only OR BSD-2-Clause), first %s", len(missing), missing[0])
	}
	return nil
}

func firstLines(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for i := 0; i < n && sc.Scan(); i++ {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String(), sc.Err()
}
