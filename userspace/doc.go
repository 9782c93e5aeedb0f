// SPDX-License-Identifier: Apache-2.0

// Package userspace is pepsal's userspace half, in sub-packages; this one
// holds no code, only this map. Each package imports only those below it
// (daemon -> peer -> proxy -> relay -> conn, tuning, sockopt, report), and
// each package's own doc says the rest of what it must not touch.
//
//   - daemon: a running pepsal, phase by phase (sockets fresh or inherited,
//     the BPF side and the relay choice, the pipeline and its warm paths,
//     the control socket and metrics, the serve loop with its upgrade by
//     SIGHUP). Only cmd/pepsal (and an integration test, for the window
//     probe) imports it; it holds no per-connection logic.
//   - peer: the warm paths between two pepsals: the terminal's Pool and
//     its Warm upstream, the Gateway (an accept side), their protocol and
//     the pacing of flows that start together. Must not reach into the
//     relays or the connection table.
//   - outage: the warm paths' outage watch: it pings the other pepsal
//     while long legs toward it are stalled (their timeouts recorded by
//     sock_ops) and makes them retransmit at its first answer after a
//     silence. Knows sockets by address only; imports loader only.
//   - proxy: the connection pipeline: accept sides (Acceptor), the one
//     setup path (Flow), the upstreams (Direct, FastOpen) and the dialer,
//     the table of live connections, admission and the fd budget. Must not
//     import peer or daemon, nor move bytes.
//   - relay: moving a connection's bytes (splice, the kernel's verdict, the
//     hand-over between them), pipes and the idle waiter. Must not dial,
//     accept or count outcomes.
//   - conn: the record of one connection and its named states (relay,
//     outcome). Knows neither the table nor the relays.
//   - tuning: what each leg asks of TCP, and putting it on a socket. Must
//     not know connections, relays or the BPF side.
//   - sockopt: socket helpers on descriptors; imports no pepsal package.
//   - report: the status and conns JSON schema, and the client's side of
//     the control socket (where it is, and that it is pepsal's); imports
//     loader only.
//   - internal/logx, internal/enum: logging helpers and enum texts, for the
//     packages above; internal/nettest: what their unit tests share.
package userspace
