// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/kmatrix"
	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// What a stress connection does.
const (
	stressNormal      = iota // upload, half-close, download, report
	stressClientReset        // the client resets midway
	stressServerReset        // the server resets midway
)

const stressHeader = 25 // up u64, down u64, seed u64, mode u8

// stressServer serves the three kinds of stress connections; for client
// resets it records whether it saw the reset (a hung server is a failure).
func stressServer(t *testing.T, ns *testbed.NS, addr string, sawReset chan<- uint64) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(kmatrix.Stretch(150 * time.Second)))
		var hdr [stressHeader]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		up := int64(binary.BigEndian.Uint64(hdr[0:]))
		down := int64(binary.BigEndian.Uint64(hdr[8:]))
		seed := binary.BigEndian.Uint64(hdr[16:])
		switch hdr[24] {
		case stressNormal:
			answerExchange(c, int64(down), seed)
		case stressClientReset:
			if resetSeen(c, io.LimitReader(newStream(seed), down)) == nil {
				sawReset <- seed
			}
		case stressServerReset:
			io.Copy(c, io.LimitReader(newStream(seed), down/2))
			io.CopyN(io.Discard, c, up/2)
			c.SetLinger(0)
			c.Close()
		}
	})
}

// stressConn runs one connection from the client side; nil means it behaved.
func stressConn(ns *testbed.NS, addr string, mode byte, up, down int64, seed uint64, deadline time.Time) error {
	c, err := dial(ns, addr, kmatrix.Stretch(30*time.Second))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	var hdr [stressHeader]byte
	binary.BigEndian.PutUint64(hdr[0:], uint64(up))
	binary.BigEndian.PutUint64(hdr[8:], uint64(down))
	binary.BigEndian.PutUint64(hdr[16:], seed)
	hdr[24] = mode
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}
	switch mode {
	case stressNormal:
		return checkExchange(c, up, down, seed)
	case stressClientReset:
		go io.Copy(c, io.LimitReader(newStream(seed), up))
		h := sha256.New()
		if _, err := io.CopyN(h, c, down/2); err != nil {
			return fmt.Errorf("before reset: %w", err)
		}
		c.SetLinger(0)
		c.Close()
	case stressServerReset:
		if err := resetSeen(c, io.LimitReader(newStream(seed), up)); err != nil {
			return fmt.Errorf("server reset: %w", err)
		}
	}
	return nil
}

// resetSeen writes send to c while it reads c to its end, and says whether
// the peer reset the connection. A reset's error goes to whichever call
// meets it first: when the writer took it, the reader sees a plain end of
// stream (CI's 6.1 guest saw that), so both are asked.
func resetSeen(c *net.TCPConn, send io.Reader) error {
	wrote := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, send)
		wrote <- err
	}()
	_, err := io.Copy(io.Discard, c)
	if isReset(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read ended with %v, want ECONNRESET", err)
	}
	select {
	case werr := <-wrote:
		if isReset(werr) {
			return nil
		}
		return fmt.Errorf("a clean end of stream, and the writer ended with %v: no reset", werr)
	case <-time.After(kmatrix.Stretch(10 * time.Second)):
		return errors.New("a clean end of stream, and the writer still blocked 10 s later: no reset")
	}
}

// testRandomStress: 200 connections of random sizes, half-closes and resets
// over the lossy GEO link. Nothing corrupted, truncated or hung; afterwards no
// connection, relay map entry, descriptor or goroutine is left.
func testRandomStress(t *testing.T, cfg suite) {
	if testing.Short() {
		t.Skip("over a 600 ms lossy link")
	}
	link, err := linkemu.Profile("geo-lossy")
	if err != nil {
		t.Fatal(err)
	}
	link.Seed = 7
	b := newBedWith(t, cfg, testbed.Options{Middle: linkemu.Middle(link)})
	sawReset := make(chan uint64, 256)
	for _, f := range families {
		stressServer(t, b.Server, hostPort(f.server, 7600), sawReset)
	}
	// A client's reset is lost on the link 1 time in 100. When pepsal has
	// nothing more to send to that client, no new reset comes, and only the
	// client leg's keepalive finds it (LostResetFoundByKeepalive); the
	// default, 60 s, is longer than this test waits.
	b.startPepsal("--iface", testbed.RouterClientIf, "--keepalive", "3s")
	base := b.daemonInfo()
	pid := b.daemonPID()
	// fds counted by kind from /proc, outside any status request: pepsal's
	// pipes live only while bytes move, so once every connection has ended
	// the daemon holds what it held at the start, pipe for pipe.
	baseFDs := restingFDs(t, pid, -1)

	rng := rand.New(rand.NewPCG(11, 12))
	const n = 200
	// Bounds on a hang, not on speed: an emulated guest (the kernel
	// matrix) on a busy host needs longer for all of them.
	deadline := time.Now().Add(kmatrix.Stretch(150 * time.Second))
	var wg sync.WaitGroup
	errs := make(chan error, n)
	clientResets := map[uint64]bool{}
	for i := range n {
		f := families[i%2]
		mode := byte(stressNormal)
		switch r := rng.IntN(10); {
		case r == 0:
			mode = stressClientReset
		case r == 1:
			mode = stressServerReset
		}
		up, down := rng.Int64N(48<<10), rng.Int64N(192<<10)
		if mode != stressNormal {
			up, down = up+2, down+2
		}
		seed := uint64(1000 + i)
		if mode == stressClientReset {
			clientResets[seed] = true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 20 * time.Millisecond) // spread the SYNs over 4 s
			if err := stressConn(b.Client, hostPort(f.server, 7600), mode, up, down, seed, deadline); err != nil {
				errs <- fmt.Errorf("conn %d (%s, mode %d, up %d, down %d): %w", i, f.name, mode, up, down, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("hung: %v", err)
		} else {
			t.Error(err)
		}
	}
	// Every client reset must reach its server: at once, or after
	// --keepalive when the reset was lost.
	waitReset := time.After(kmatrix.Stretch(20 * time.Second))
	for len(clientResets) > 0 {
		select {
		case s := <-sawReset:
			delete(clientResets, s)
		case <-waitReset:
			t.Errorf("%d client resets never reached the server", len(clientResets))
			clientResets = nil
		}
	}

	// Leaks: wait for the daemon to settle, then compare with the start.
	var info *report.DaemonInfo
	var st *report.RelayReport
	var fds fdKinds
	for end := time.Now().Add(kmatrix.Stretch(15 * time.Second)); ; {
		fds = processFDs(t, pid)
		s := b.daemonStatus()
		info, st = s.Daemon, s.Relay
		settled := info.Stats.Active == 0 && st.Sockets == 0 && st.Directions == 0 && st.UserCounts == 0 &&
			fds.total <= baseFDs.total && fds.sockets <= baseFDs.sockets && fds.pipes <= baseFDs.pipes &&
			info.Goroutines <= base.Goroutines+2
		if settled || time.Now().After(end) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if info.Stats.Active != 0 {
		t.Errorf("%d connections still active", info.Stats.Active)
	}
	if st.Sockets != 0 || st.Directions != 0 || st.UserCounts != 0 {
		t.Errorf("relay maps leak: %d sockets, %d directions, %d user counts", st.Sockets, st.Directions, st.UserCounts)
	}
	if fds.total > baseFDs.total || fds.sockets > baseFDs.sockets || fds.pipes > baseFDs.pipes {
		t.Errorf("fds: %v after, %v before", fds, baseFDs)
	}
	if info.Goroutines > base.Goroutines+2 {
		t.Errorf("goroutines: %d after, %d before", info.Goroutines, base.Goroutines)
	}
	if info.Stats.Accepted != n {
		t.Errorf("accepted %d, want %d", info.Stats.Accepted, n)
	}
	t.Logf("%s: %+v", cfg.relay, info.Stats)
	if cfg.relayInUse(t) == "sockmap" {
		// Retransmissions over the lossy link that overlap bytes received
		// before: relayed whole, their heads would be duplicated.
		s := b.daemonStatus()
		t.Logf("overlapping skbs: %d cut, %d dropped; %d without a sequence number",
			s.counter("relay_overlap_trimmed"), s.counter("relay_overlap_dropped"), s.counter("relay_no_seq"))
	}
}
