// SPDX-License-Identifier: Apache-2.0

// Package kmatrix runs pepsal's test suites under other Linux kernels: each
// kernel of a list (Debian's own packages, fetched with apt-get download)
// boots under qemu (KVM where /dev/kvm can run it, TCG otherwise) with this
// machine's root file system shared read-only over 9p beneath a tmpfs
// overlay; a runner inside (the same binary, in guest mode) runs the test
// binaries built here, one process per group so that a hang costs one
// group, and writes the results to a shared directory. The host prints one
// table, test x kernel.
//
// It must not touch the host: apt works in a private state directory, and
// everything it downloads, unpacks and builds stays under its cache
// directory (/var/cache/pepsal-kernels by default).
package kmatrix
