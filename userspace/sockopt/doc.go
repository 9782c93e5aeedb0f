// SPDX-License-Identifier: Apache-2.0

// Package sockopt holds the socket helpers the rest of userspace shares:
// running code on a descriptor, the socket cookie, TCP_INFO readings,
// resets, IP-level options, sysctls, the count of open descriptors, and
// who is at the other end of a unix socket (PeerOf).
//
// It owns no state (every function works on what it is given) and imports
// no pepsal package, so that any package may use it. The loader keeps its
// own small fd helper: the kernel side does not depend on userspace.
package sockopt
