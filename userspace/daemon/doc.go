// SPDX-License-Identifier: Apache-2.0

// Package daemon is a running pepsal: Run sets it up in phases (its
// sockets, fresh or handed over by the daemon it replaces; the BPF side, the
// relay this kernel allows and what is off; the pipeline with its warm
// paths; the control socket and the metrics), then serves until a signal
// stops it or hands it over to the binary on disk (SIGHUP, upgrade.go).
// Options and Kernel are what cmd/pepsal hands it.
//
// It owns the daemon's lifecycle and what observes it (`pepsal status`,
// Prometheus), not the connections: those are proxy's and peer's, which it
// wires together and must not reach into. cmd/pepsal imports it, and an
// integration test for ProbeLargeInitialWindow. A run's state lives in its
// run value; nothing is kept at package level.
package daemon
