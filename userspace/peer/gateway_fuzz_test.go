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

func newGatewayBed(f *testing.F) *gatewayBed {
	g, err := Listen("127.0.0.1:0", tuning.Tuning{})
	if err != nil {
		f.Fatal(err)
	}
	g.Key = testKey
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b := &gatewayBed{g: g, p: proxy.NewPipeline(nil, proxy.Config{Log: log}), up: stubUpstream{make(chan proxy.Flow, 2)}}
	b.p.Accept(g, b.up)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.p.Serve(ctx, ctx); close(done) }()
	f.Cleanup(func() { cancel(); <-done; b.p.Close() })
	// One connection, closed idle, has the accept loop running: the
	// goroutines counted before each input are all there for good.
	c, err := net.DialTCP("tcp", nil, g.Addr().(*net.TCPAddr))
	if err != nil {
		f.Fatal(err)
	}
	_, _ = io.ReadFull(c, make([]byte, HelloLen))
	c.Close()
	for end := time.Now().Add(fuzzDeadline); b.g.Stats().IdleClosed == 0; time.Sleep(time.Millisecond) {
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

// send is one terminal's connection: read the hello, send data (made
// authentic as far as how says, see sign) in writes of chunk bytes, end
// it, and read until the gateway resets or closes. It returns the hello
// and the bytes sent.
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
	sign(payload, testKey, h, how)
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

// gatewayVerdict is what the gateway must do with payload on the
// connection that sent h: refuse it under reason, close it idle (no
// bytes), or forward the flow hdr asks for (reason "").
func gatewayVerdict(h hello, payload []byte) (reason string, hdr header) {
	switch {
	case len(payload) >= 4 && !bytes.Equal(payload[:4], headerMagic[:]):
		return report.AuthGarbage, hdr // refused on its first 4 bytes
	case len(payload) < HeaderLen:
		return report.AuthIncomplete, hdr
	}
	if why := wantReason(testKey, h, payload); why != "" {
		return why, hdr
	}
	hdr, err := decodeHeader(testKey, h, payload)
	if err != nil {
		return report.AuthGarbage, hdr
	}
	return "", hdr
}

// FuzzGatewayConn drives the gateway's handling of one connection (its
// accept loop, serve, readHeader, decodeHeader, the flow's setup) over
// loopback TCP with what anyone reaching its port may send: bytes made
// authentic as far as how says (sign), in writes of chunk bytes. Each
// input is answered within fuzzDeadline and leaves no goroutine, waiting
// connection or table entry; it is counted once, under the reason the
// protocol gives; and a flow reaches the upstream if and only if its
// header is authentic (its MAC checked here again) and its destination
// may be dialed, with the header's addresses and only the bytes after it.
func FuzzGatewayConn(f *testing.F) {
	b := newGatewayBed(f)
	var anyHello hello
	encode := func(dst, cli string, tos uint8) []byte {
		hb, err := header{ToS: tos, Dst: netip.MustParseAddrPort(dst), Client: netip.MustParseAddrPort(cli)}.encode(testKey, anyHello)
		if err != nil {
			f.Fatal(err)
		}
		return hb[:]
	}
	good := encode("10.0.0.1:443", "192.168.1.2:50000", 0x28)
	f.Add([]byte{}, uint8(0), uint16(0))
	f.Add(good, uint8(3), uint16(0))
	f.Add(append(bytes.Clone(good), "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"...), uint8(3), uint16(7))
	f.Add(good, uint8(1), uint16(0)) // not MAC'd for this connection
	f.Add(good, uint8(0), uint16(0)) // another connection's header
	f.Add(good[:60], uint8(3), uint16(0))
	f.Add(good[:3], uint8(0), uint16(1))
	f.Add(encode("127.0.0.1:22", "10.0.0.2:1", 0), uint8(3), uint16(0)) // authentic, denied destination
	f.Add(encode("[2001:db8::1]:80", "[fd00::2]:1234", 0), uint8(3), uint16(30))
	f.Add(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8), uint8(3), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, how uint8, chunk uint16) {
		data = data[:min(len(data), 256<<10)]
		goroutines := runtime.NumGoroutine()
		before, s0 := b.outcomes()
		h, payload := b.send(t, data, how, int(chunk))
		s1 := b.settle(t, before, goroutines)
		reason, hdr := gatewayVerdict(h, payload)
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
		case len(payload) == 0:
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
			if reason == "" && len(payload) > 0 && (proxy.DestPolicy{}).Check(hdr.Dst.Addr()) == nil {
				t.Fatalf("authentic header for %v: nothing reached the upstream", hdr.Dst)
			}
			return
		}
		if reason != "" || wantReason(testKey, h, payload) != "" {
			t.Fatalf("forwarded to %v without an authentic header (%q): %x", got.Dst, reason, payload)
		}
		if got.Dst != hdr.Dst || got.Client != hdr.Client || got.ToS != uint32(hdr.ToS) || !got.Warm ||
			got.ClientRead != HeaderLen || !bytes.HasPrefix(payload[HeaderLen:], got.First) {
			t.Fatalf("header %+v forwarded as %+v", hdr, got)
		}
	})
}
