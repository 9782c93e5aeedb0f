// SPDX-License-Identifier: Apache-2.0

// Package peer is the warm paths between two pepsals across the satellite
// link. A terminal keeps a Pool of idle connections to its gateway, greeted
// and ready, and sends a client's flow over one of them (Warm, a
// proxy.Upstream in front of fast open); the Gateway accepts them (a
// proxy.Acceptor), authenticates each connection's one header (the
// protocol, proto.go) and paces the flows a terminal starts together to a
// share of its link (share.go).
//
// It builds on proxy: a warm flow is set up and relayed like any other, the
// gateway's pacing hooked in through proxy.Flow.OnRelay, so it must not
// reach into the relays or the connection table. The daemon wires it in;
// cmd/pepsal reads its key (LoadKey) and the tests speak its protocol
// (EncodeHeader). Its state lives in its Pool and Gateway values; at
// package level it has only the protocol's constants and magics.
package peer
