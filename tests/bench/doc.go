// SPDX-License-Identifier: Apache-2.0

// Package bench measures pepsal on namespaced test beds: transfer times over
// emulated satellite links (gateway PEP and two-PEP topologies) against no
// proxy and the reference PEPsal, and the relay's throughput, CPU, latency
// and memory on plain veth. It drives `make bench` and `make demo` through
// tests/cmd/pepsal-bench; its results are reported, never asserted.
package bench
