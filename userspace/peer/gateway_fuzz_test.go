// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/tuning"
)

// fuzzDeadline bounds one input: the gateway must have answered (reset
// or served) and let everything of it go within this.
const fuzzDeadline = 5 * time.Second

// stubUpstream is the gateway's upstream in FuzzGatewayConn: it records
// each flow it is asked to connect and dials nothing; the flow fails as an
// unreachable server would.
type stubUpstream struct{ flows chan proxy.Flow }

func (s stubUpstream) Connect(_ context.Context, _ *conn.Conn, f *proxy.Flow) (proxy.ServerLeg, error) {
	rec := *f
	rec.First = bytes.Clone(f.First)
	select {
	case s.flows <- rec:
	default: // more than one flow for one input: the check after it says so
	}
	return proxy.ServerLeg{}, &proxy.FlowError{Outcome: conn.UpstreamFailed, Level: slog.LevelDebug,
		Msg: "fuzz upstream", Err: errors.New("the fuzz upstream dials nothing")}
}

// gatewayBed is a gateway on loopback in a pipeline of its own, as the
// daemon runs it, whose upstream is a stubUpstream.
type gatewayBed struct {
	g  *Gateway
	p  *proxy.Pipeline
	up stubUpstream
}

func newGatewayBed(f testing.TB, keys *Keys, file string) *gatewayBed {
	g, err := Listen("127.0.0.1:0", tuning.Tuning{})
	if err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	g.UseKeys(keys, file, log)
	b := &gatewayBed{g: g, p: proxy.NewPipeline(nil, proxy.Config{Log: log}), up: stubUpstream{make(chan proxy.Flow, 2)}}
	b.p.Accept(g, b.up)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.p.Serve(ctx, ctx); close(done) }()
	f.Cleanup(func() { cancel(); <-done; b.p.Close() })
	// One connection, closed before authenticating, has the accept loop
	// running: the goroutines counted before each input are all there for
	// good.
	c, err := net.DialTCP("tcp", nil, g.Addr().(*net.TCPAddr))
	if err != nil {
		f.Fatal(err)
	}
	_, _ = io.ReadFull(c, make([]byte, HelloLen))
	c.Close()
	for end := time.Now().Add(fuzzDeadline); b.g.Stats().Refused[report.AuthClosed] == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			f.Fatal("the gateway never saw its first connection closed")
		}
	}
	return b
}

// outcomes is how many connections the gateway has finished with, and why.
func (b *gatewayBed) outcomes() (total uint64, s report.PeerGatewayStats) {
	s = b.g.Stats()
	total = s.Served + s.IdleClosed
	for _, n := range s.Refused {
		total += n
	}
	return total, s
}

// send is one terminal's connection: read the hello; with bit 2 of how,
// authenticate (auth, welcome) and send data as the header phase, made
// authentic as far as how says (sign); without, send data as the auth
// message, made authentic as far as how says (signAuth). Data goes in
// writes of chunk bytes; then end it, and read until the gateway resets or
// closes. It returns the hello and the bytes sent after it (after the auth
// with bit 2).
func (b *gatewayBed) send(t *testing.T, data []byte, how uint8, chunk int) (hello, []byte) {
	c, err := net.DialTCP("tcp", nil, b.g.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fuzzDeadline))
	var h hello
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("no hello: %v", err)
	}
	if err := checkHello(h); err != nil {
		t.Fatalf("the gateway's own hello: %v", err)
	}
	payload := bytes.Clone(data)
	if how&4 != 0 {
		if _, err := greetAfterHello(c, h); err != nil {
			t.Fatalf("authentication: %v", err)
		}
		sign(payload, testKey, h, how)
	} else {
		signAuth(payload, testKey, h, how)
	}
	if chunk <= 0 || chunk > len(payload) {
		chunk = max(len(payload), 1)
	}
	chunk = max(chunk, (len(payload)+63)/64) // at most 64 writes
	for rest := payload; len(rest) > 0; rest = rest[min(chunk, len(rest)):] {
		if _, err := c.Write(rest[:min(chunk, len(rest))]); err != nil {
			break // refused before the end: the reset came first
		}
	}
	_ = c.CloseWrite()
	if _, err := io.Copy(io.Discard, c); isTimeout(err) {
		t.Fatalf("the gateway still holds the connection after %v (sent %d bytes)", fuzzDeadline, len(payload))
	}
	return h, payload
}

// greetAfterHello authenticates c, whose hello h was read, with testKey.
func greetAfterHello(c *net.TCPConn, h hello) ([WelcomeLen]byte, error) {
	var w [WelcomeLen]byte
	a, err := encodeAuth(testKey, "", h)
	if err == nil {
		_, err = c.Write(a[:])
	}
	if err == nil {
		_, err = io.ReadFull(c, w[:])
	}
	if err == nil {
		err = checkWelcome(testKey, h, a[:], w[:])
	}
	return w, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// settle waits until the gateway is done with the input: one more
// outcome, nothing waiting for a header, no connection in the table and
// no goroutine beyond those before the input.
func (b *gatewayBed) settle(t *testing.T, before uint64, goroutines int) report.PeerGatewayStats {
	end := time.Now().Add(fuzzDeadline)
	for {
		total, s := b.outcomes()
		n := runtime.NumGoroutine()
		if total == before+1 && s.Waiting == 0 && b.p.Table.Len() == 0 && n <= goroutines {
			return s
		}
		if time.Now().After(end) {
			stacks := make([]byte, 64<<10)
			stacks = stacks[:runtime.Stack(stacks, true)]
			t.Fatalf("after %v: %d outcomes for 1 input, %d waiting, %d in the table, %d goroutines (%d before):\n%s",
				fuzzDeadline, total-before, s.Waiting, b.p.Table.Len(), n, goroutines, stacks)
		}
		time.Sleep(time.Millisecond)
	}
}

// gatewayVerdict is what the gateway must do with payload, sent after
// the hello h (authed: after an authentic auth): refuse it under reason,
// close it idle (idle: no header bytes), or forward the flow hdr asks for
// (reason ""), with the bytes of the header phase hp.
func gatewayVerdict(h hello, payload []byte, authed bool) (reason string, idle bool, hdr header, hp []byte) {
	hp = payload
	if !authed {
		switch {
		case len(payload) == 0:
			return report.AuthClosed, false, hdr, nil
		case !hasPrefix(payload, authMagic[:]):
			return report.AuthGarbage, false, hdr, nil // refused on its first bytes
		}
		if why := wantAuthReason(testKey, h, payload); why != "" {
			return why, false, hdr, nil
		}
		hp = payload[AuthLen:]
	}
	switch {
	case len(hp) == 0:
		return "", true, hdr, hp
	case !hasPrefix(hp, headerMagic[:]):
		return report.AuthGarbage, false, hdr, hp
	case len(hp) < HeaderLen:
		return report.AuthIncomplete, false, hdr, hp
	}
	if why := wantReason(testKey, h, hp); why != "" {
		return why, false, hdr, hp
	}
	hdr, err := decodeHeader(testKey, h, hp)
	if err != nil {
		return report.AuthGarbage, false, hdr, hp
	}
	return "", false, hdr, hp
}

// FuzzGatewayConn drives the gateway's handling of one connection (its
// accept loop, serve, authenticate, readHeader, decodeHeader, the flow's
// setup) over loopback TCP with what anyone reaching its port may send:
// bytes of the auth phase, or after an authentic auth bytes of the header
// phase, made authentic as far as how says (signAuth, sign), in writes of
// chunk bytes. Each input is answered within fuzzDeadline and leaves no
// goroutine, held connection or table entry; it is counted once, under the
// reason the protocol gives; and a flow reaches the upstream if and only
// if its auth and header are authentic (their MACs checked here again) and
// its destination may be dialed, with the header's addresses and only the
// bytes after it.
func FuzzGatewayConn(f *testing.F) {
	b := newGatewayBed(f, SingleKey(testKey), "")
	var anyHello hello
	encode := func(dst, cli string, tos uint8) []byte {
		hb, err := header{ToS: tos, Dst: netip.MustParseAddrPort(dst), Client: netip.MustParseAddrPort(cli)}.encode(testKey, anyHello)
		if err != nil {
			f.Fatal(err)
		}
		return hb[:]
	}
	good := encode("10.0.0.1:443", "192.168.1.2:50000", 0x28)
	auth, err := encodeAuth(testKey, "", anyHello)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, uint8(0), uint16(0))
	f.Add([]byte{}, uint8(4), uint16(0))
	f.Add(good, uint8(7), uint16(0))
	f.Add(append(bytes.Clone(good), "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"...), uint8(7), uint16(7))
	f.Add(good, uint8(5), uint16(0)) // not MAC'd for this connection
	f.Add(good, uint8(4), uint16(0)) // another connection's header
	f.Add(good[:60], uint8(7), uint16(0))
	f.Add(good[:3], uint8(4), uint16(1))
	f.Add(encode("127.0.0.1:22", "10.0.0.2:1", 0), uint8(7), uint16(0)) // authentic, denied destination
	f.Add(encode("[2001:db8::1]:80", "[fd00::2]:1234", 0), uint8(7), uint16(30))
	f.Add(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8), uint8(7), uint16(0))
	f.Add(auth[:], uint8(3), uint16(0))                                                     // the auth phase: authentic, then idle
	f.Add(append(bytes.Clone(auth[:]), good...), uint8(3), uint16(9))                       // authentic auth, another connection's header
	f.Add(auth[:], uint8(2), uint16(0))                                                     // another connection's auth
	f.Add(auth[:], uint8(1), uint16(0))                                                     // not MAC'd
	f.Add(auth[:50], uint8(3), uint16(0))                                                   // cut short
	f.Add([]byte("P"), uint8(0), uint16(0))                                                 // one byte
	f.Add(good, uint8(3), uint16(0))                                                        // a header where the auth goes (version 1 talk)
	f.Add(append([]byte("PEPA\x02\x06\x00\x00"), make([]byte, 80)...), uint8(3), uint16(0)) // an id this gateway lacks
	f.Fuzz(func(t *testing.T, data []byte, how uint8, chunk uint16) {
		data = data[:min(len(data), 256<<10)]
		goroutines := runtime.NumGoroutine()
		before, s0 := b.outcomes()
		h, payload := b.send(t, data, how, int(chunk))
		s1 := b.settle(t, before, goroutines)
		reason, idle, hdr, hp := gatewayVerdict(h, payload, how&4 != 0)
		var got *proxy.Flow
		select {
		case fl := <-b.up.flows:
			got = &fl
		default:
		}
		if len(b.up.flows) > 0 {
			t.Fatalf("more than one flow for one connection")
		}
		switch {
		case idle:
			if s1.IdleClosed != s0.IdleClosed+1 {
				t.Fatalf("an idle connection was not counted as closed idle: %+v", s1)
			}
		case reason != "":
			if s1.Refused[reason] != s0.Refused[reason]+1 {
				t.Fatalf("%d bytes not refused as %s: %+v", len(payload), reason, s1)
			}
		case s1.Served != s0.Served+1:
			t.Fatalf("an authentic header not served: %+v", s1)
		}
		if got == nil {
			if reason == "" && !idle && (proxy.DestPolicy{}).Check(hdr.Dst.Addr()) == nil {
				t.Fatalf("authentic header for %v: nothing reached the upstream", hdr.Dst)
			}
			return
		}
		if reason != "" || idle || wantReason(testKey, h, hp) != "" {
			t.Fatalf("forwarded to %v without an authentic auth and header (%q): %x", got.Dst, reason, payload)
		}
		if got.Dst != hdr.Dst || got.Client != hdr.Client || got.ToS != uint32(hdr.ToS) || !got.Warm ||
			got.ClientRead != AuthLen+HeaderLen || !bytes.HasPrefix(hp[HeaderLen:], got.First) {
			t.Fatalf("header %+v forwarded as %+v", hdr, got)
		}
	})
}
