// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelVersion is the upstream version a kernel is built from.
type KernelVersion struct{ Major, Minor, Patch int }

func (v KernelVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Less orders versions.
func (v KernelVersion) Less(w KernelVersion) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Patch < w.Patch
}

var (
	versionRe = regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?`)
	// Debian's /proc/version ends with the package version: "... Debian 6.1.192-3 (2025-...)";
	// its release name (6.1.0-57-amd64) carries the ABI, not the patch level.
	debianRe = regexp.MustCompile(`\bDebian (\d+\.\d+(?:\.\d+)?)`)
)

// parseKernelVersion reads the upstream version from what the running
// system says: Ubuntu's /proc/version_signature ("Ubuntu 6.8.0-45.45-generic
// 6.8.12": the last field), Debian's package version in /proc/version, or
// the release (uname -r).
func parseKernelVersion(release, procVersion, signature string) (KernelVersion, error) {
	src := release
	if f := strings.Fields(signature); len(f) >= 3 {
		src = f[len(f)-1]
	} else if m := debianRe.FindAllStringSubmatch(procVersion, -1); m != nil {
		src = m[len(m)-1][1] // the compiler's version may say "Debian" first
	}
	m := versionRe.FindStringSubmatch(src)
	if m == nil {
		return KernelVersion{}, fmt.Errorf("kernel version %q: not major.minor.patch", src)
	}
	var v KernelVersion
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Patch, _ = strconv.Atoi(m[3])
	}
	return v, nil
}

// RunningKernel is the running kernel's upstream version.
func RunningKernel() (KernelVersion, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return KernelVersion{}, fmt.Errorf("uname: %w", err)
	}
	proc, _ := os.ReadFile("/proc/version")
	sig, _ := os.ReadFile("/proc/version_signature")
	return parseKernelVersion(unix.ByteSliceToString(u.Release[:]), string(proc), string(sig))
}

// relayFixedIn is, per stable branch, the first release with both 2025
// sockmap fixes the kernel relay needs: "bpf, sockmap: Fix data lost during
// EAGAIN retries" (7683167196bd) and "bpf, sockmap: fix duplicated data
// transmission" (3b4f14b79428), in mainline from 6.16. Without them a relay
// under backpressure can lose or duplicate bytes, and no quick probe
// provokes that reliably: a version gate is all there is.
var relayFixedIn = []KernelVersion{{6, 1, 142}, {6, 6, 95}, {6, 12, 35}, {6, 15, 4}, {6, 16, 0}}

// hasRelayFixes says whether v has both fixes.
func hasRelayFixes(v KernelVersion) bool {
	last := relayFixedIn[len(relayFixedIn)-1]
	if !v.Less(last) {
		return true
	}
	for _, f := range relayFixedIn {
		if f.Major == v.Major && f.Minor == v.Minor {
			return v.Patch >= f.Patch
		}
	}
	return false
}
