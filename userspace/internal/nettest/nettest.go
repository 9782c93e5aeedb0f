// SPDX-License-Identifier: Apache-2.0

// Package nettest holds what the unit tests of userspace and its relays
// share to move bytes over loopback: a pair of connected sockets,
// reproducible random bytes, and a wait for what happens right after a
// peer saw its bytes; a connection in memory for the fuzz targets
// (MemConn); a connection's relay state from its text, for the
// tests of the table and the metrics; and, as root, a shared directory and
// this test binary run as another user (users.go).
//
// Only tests import it; it holds no state and imports no pepsal package
// but conn.
package nettest

import (
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
)

// TCPPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func TCPPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

// RandomBytes is n bytes drawn from seed: the same for the same seed.
func RandomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// WaitFor polls cond for up to 10 s: for what happens right after a peer
// saw its bytes (a pipe given back, a timer that closes idle pipes).
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("after 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RelayState is the state a connection shows as text in `pepsal conns`.
func RelayState(t testing.TB, text string) conn.RelayState {
	t.Helper()
	var r conn.RelayState
	if err := r.UnmarshalText([]byte(text)); err != nil {
		t.Fatal(err)
	}
	return r
}
