// SPDX-License-Identifier: Apache-2.0

// Package proxy is pepsal's connection pipeline (Pipeline): it accepts the
// connections that the BPF side steers to the proxy's listeners, and those
// other accept sides hand it (an Acceptor: the warm-path gateway), sets each
// one up the same way (Flow: record, loop check, destination policy, server
// leg, leg tuning), reaches its server through an Upstream (Direct,
// FastOpen, or one a caller puts in front, the warm pool) and hands both
// legs to a relay.Relay. It owns the dialer of server legs, the first bytes
// that ride on a fast-open SYN, the destinations it refuses (DestPolicy,
// with this host's routes: HostRoutes), the table of live connections with
// the admission control and fd budget built on it, and the accounting of
// local failures.
//
// It must not import peer or daemon, which build on it (the gateway is an
// Acceptor, the warm pool an Upstream), nor move bytes itself (relay does).
// Of pepsal it imports relay, conn, tuning, sockopt, report, internal/logx
// and loader's value types. It holds no package-level state.
package proxy
