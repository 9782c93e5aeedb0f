// SPDX-License-Identifier: Apache-2.0

// Package peer is the warm paths between two pepsals across the satellite
// link. A terminal keeps a Pool of idle connections to its gateway, greeted
// and ready, and sends a client's flow over one of them (Warm, a
// proxy.Upstream in front of fast open); the Gateway accepts them (a
// proxy.Acceptor) within its caps, authenticates each connection at once
// and then its one header (the protocol, proto.go; the reads,
// gatewayread.go) and paces the flows a terminal starts together to a
// share of its link (share.go).
//
// It builds on proxy: a warm flow is set up and relayed like any other, the
// gateway's pacing hooked in through proxy.Flow.OnRelay, so it must not
// reach into the relays or the connection table. The daemon wires it in;
// cmd/pepsal reads its keys (LoadKeys: one key, or a key ring of one per
// terminal, keyring.go; the gateway reads the file again when it changes
// and closes what a revoked key opened, terminals.go) and the tests speak
// its protocol (EncodeAuth, EncodeHeader). Its state lives in its Pool and
// Gateway values; at package level it has only the protocol's constants
// and magics.
package peer
