// SPDX-License-Identifier: Apache-2.0

// Package outage gets the long legs moving again the moment a link outage
// ends. Through an outage a leg's retransmission timeout doubles at every
// try, so the next try may leave long after the link returns
// (tests/linkemu/OUTAGE-STUDY.md). sock_ops records each timeout of a long
// leg (loader.Stalls); while the other pepsal of a warm path has stalled
// legs toward it, the Watcher pings it
// every Every; a remote silent for Silence is down, and its first answer
// after that means the link is back: the Watcher then sends its own stack,
// for each stalled leg toward that remote, the ICMP host unreachable that
// RFC 6069 (TCP-LD, Linux's tcp_ld_RTO_revert) answers by undoing a
// back-off step and retransmitting at once. Linux does this for IPv4 only:
// legs over IPv6 keep their back-off (bounded by --rto-max where the
// kernel has it).
package outage
