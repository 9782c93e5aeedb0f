// SPDX-License-Identifier: Apache-2.0

package loader

import "testing"

// TestLayoutFingerprint: the pinned maps are those of LayoutVersion. When
// this fails, a map was added, removed or changed its key or value: bump
// LayoutVersion and record the new fingerprint, so that a binary never
// misreads pins made by another version.
func TestLayoutFingerprint(t *testing.T) {
	got, err := mapsFingerprint()
	if err != nil {
		t.Fatal(err)
	}
	if got != layoutFingerprint {
		t.Fatalf("the pinned maps changed: bump LayoutVersion (%d) and set layoutFingerprint to\n%q", LayoutVersion, got)
	}
}
