// SPDX-License-Identifier: Apache-2.0

package loader

import "testing"

func TestParseKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		release, proc, sig string
		want               KernelVersion
	}{
		{"6.1.0-57-amd64", "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2025-11-20)", "", KernelVersion{6, 1, 192}},
		{"6.12.118+deb12-amd64", "Linux version 6.12.118+deb12-amd64 ... #1 SMP PREEMPT_DYNAMIC Debian 6.12.118-1~deb12u1 (2026-01-01)", "", KernelVersion{6, 12, 118}},
		{"6.8.0-45-generic", "Linux version 6.8.0-45-generic (buildd@lcy02) ...", "Ubuntu 6.8.0-45.45-generic 6.8.12\n", KernelVersion{6, 8, 12}},
		{"6.18.44-fc-v1300", "Linux version 6.18.44-fc-v1300 (root@build) ...", "", KernelVersion{6, 18, 44}},
		{"7.0", "", "", KernelVersion{7, 0, 0}},
	} {
		got, err := parseKernelVersion(tc.release, tc.proc, tc.sig)
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, %v; want %v", tc.release, got, err, tc.want)
		}
	}
	if _, err := parseKernelVersion("weird", "", ""); err == nil {
		t.Error("a release that is no version: accepted")
	}
}

func TestHasRelayFixes(t *testing.T) {
	for v, want := range map[KernelVersion]bool{
		{6, 1, 141}: false, {6, 1, 192}: true,
		{6, 4, 16}: false, {6, 6, 94}: false, {6, 6, 95}: true,
		{6, 12, 34}: false, {6, 12, 35}: true, {6, 12, 118}: true,
		{6, 14, 11}: false, {6, 15, 3}: false, {6, 15, 4}: true,
		{6, 16, 0}: true, {6, 18, 15}: true, {7, 0, 0}: true, {5, 15, 190}: false,
	} {
		if got := hasRelayFixes(v); got != want {
			t.Errorf("%v: %v, want %v", v, got, want)
		}
	}
}
