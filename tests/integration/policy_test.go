// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestRouterOwnTrafficNotIntercepted: connections to the router's own
// addresses reach its own services; the proxy's port cannot be reached from
// outside, and a local connection to it is refused (no loop, no open relay).
//
// It runs once, not per relay mode: no connection reaches a relay (loops are refused at accept).
func TestRouterOwnTrafficNotIntercepted(t *testing.T) {
	b := newBed(t, defaultSuite())
	peerServer(t, b.Router, "[::]:2222") // "sshd" on the router, dual stack
	b.startPepsal()
	for _, f := range families {
		for _, addr := range []string{f.routerClient, f.routerServer} {
			if got := peerSeen(t, b.Client, hostPort(addr, 2222)); got != f.client {
				t.Errorf("%s: router service at %s saw %s, want the client %s", f.name, addr, got, f.client)
			}
		}
		// The proxy listens on loopback only: from outside its port is closed.
		if _, err := dial(b.Client, hostPort(f.routerClient, 5000), 3*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: dial to the router's proxy port: %v, want connection refused", f.name, err)
		}
	}
	// A local process connecting to the listener itself would make it relay to itself.
	for _, addr := range []string{"127.0.0.1:5000", "[::1]:5000"} {
		c, err := dial(b.Router, addr, 3*time.Second)
		if err == nil { // on loopback the reset may already beat the dial's return
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !isReset(err) {
			t.Errorf("direct connection to %s: %v, want reset", addr, err)
		}
	}
	s := b.status()
	if got := s.counter("syn_bypass_local"); got != 6 {
		t.Errorf("syn_bypass_local = %d, want 6", got)
	}
	if got := s.counter("syn_diverted"); got != 0 {
		t.Errorf("syn_diverted = %d, want 0", got)
	}
	if s.Daemon == nil || s.Daemon.Stats.LoopRefused != 2 || s.Daemon.Stats.Accepted != 2 {
		t.Errorf("daemon stats %+v, want 2 accepted, both refused as loops", s.Daemon)
	}
}

// TestUDPAndICMPPass: non-TCP traffic is forwarded as before.
//
// It runs once, not per relay mode: no TCP, no relay.
func TestUDPAndICMPPass(t *testing.T) {
	b := newBed(t, defaultSuite())
	b.startPepsal()
	for _, f := range families {
		var pc net.PacketConn
		if err := b.Server.Do(func() (err error) {
			pc, err = net.ListenPacket("udp", hostPort(f.server, 5353))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
		var got []byte
		err := b.Client.Do(func() error {
			c, err := net.Dial("udp", hostPort(f.server, 5353))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			c.Write([]byte("udp echo"))
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			got = buf[:n]
			return err
		})
		if err != nil || string(got) != "udp echo" {
			t.Errorf("%s UDP: %q, %v", f.name, got, err)
		}
		if err := ping(b.Client, f.server); err != nil {
			t.Errorf("%s ICMP echo: %v", f.name, err)
		}
	}
	if got := b.status().counter("pkt_not_tcp"); got < 4 {
		t.Errorf("pkt_not_tcp = %d, want at least the 4 UDP/ICMP requests", got)
	}
}

// ping sends one ICMP echo request from ns and waits for the reply.
func ping(ns *testbed.NS, addr string) error {
	return ns.Do(func() error {
		v6 := net.ParseIP(addr).To4() == nil
		network, reqType, repType := "ip4:icmp", byte(8), byte(0)
		if v6 {
			network, reqType, repType = "ip6:ipv6-icmp", 128, 129
		}
		c, err := net.ListenPacket(network, "")
		if err != nil {
			return err
		}
		defer c.Close()
		msg := []byte{reqType, 0, 0, 0, 0x12, 0x34, 0, 1, 'p', 'e', 'p'}
		if !v6 { // the kernel computes ICMPv6 checksums itself
			sum := icmpChecksum(msg)
			msg[2], msg[3] = byte(sum>>8), byte(sum)
		}
		dst, _ := net.ResolveIPAddr("ip", addr)
		if _, err := c.WriteTo(msg, dst); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 1500)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			if n >= 8 && buf[0] == repType && buf[4] == 0x12 && buf[5] == 0x34 {
				return nil
			}
		}
	})
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestPolicyBypass: excluded destinations and ports not in --ports are
// forwarded unsplit; listed ports are split.
func testPolicyBypass(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
		peerServer(t, b.Server, hostPort(f.server, 9090))
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--ports", "80,8000-8100", "--exclude", "10.77.2.2/32")
	cases := []struct {
		fam    family
		port   int
		split  bool
		reason string
	}{
		{families[0], 8080, false, "excluded prefix"},
		{families[0], 9090, false, "port not listed (checked before the prefix)"},
		{families[1], 8080, true, "listed port"},
		{families[1], 9090, false, "port not listed"},
	}
	for _, c := range cases {
		want := c.fam.client
		if c.split {
			want = c.fam.routerServer
		}
		if got := peerSeen(t, b.Client, hostPort(c.fam.server, c.port)); got != want {
			t.Errorf("%s port %d (%s): server saw %s, want %s", c.fam.name, c.port, c.reason, got, want)
		}
	}
	s := b.status()
	for name, want := range map[string]uint64{"syn_bypass_excluded": 1, "syn_bypass_port": 2, "syn_diverted": 1} {
		if got := s.counter(name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

// TestFlowOpenedBeforeAttachSurvives: a connection that existed before pepsal
// started keeps working, unsplit, in both directions.
//
// It runs once, not per relay mode: the flows are never split.
func TestFlowOpenedBeforeAttachSurvives(t *testing.T) {
	b := newBed(t, defaultSuite())
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}
	type open struct {
		f family
		c *net.TCPConn
	}
	var conns []open
	for _, f := range families {
		c := mustDial(t, b.Client, hostPort(f.server, 8080))
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if line, err := readLine(c); err != nil || line != f.client {
			t.Fatalf("%s: before attach: %q %v", f.name, line, err)
		}
		conns = append(conns, open{f, c})
	}
	b.startPepsal()
	for _, o := range conns {
		msg := bytes.Repeat([]byte("after attach "), 100000) // 1.3 MB, many packets
		go o.c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(o.c, got); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("%s: echo after attach broken: %v", o.f.name, err)
		}
		o.c.CloseWrite()
		if rest, err := io.ReadAll(o.c); err != nil || len(rest) != 0 {
			t.Errorf("%s: clean close after attach: %q %v", o.f.name, rest, err)
		}
	}
	s := b.status()
	if got := s.counter("syn_diverted"); got != 0 {
		t.Errorf("syn_diverted = %d, want 0", got)
	}
	if got := s.counter("pkt_forwarded"); got == 0 {
		t.Error("pkt_forwarded = 0: the old flows' packets were not seen")
	}
}

// TestBothDirectionsAndOwnUpstream: with both interfaces intercepted,
// connections are split whichever side opens them, and the proxy's own
// upstream connections are not intercepted again.
func testBothDirectionsAndOwnUpstream(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
		peerServer(t, b.Client, hostPort(f.client, 8081))
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--iface", testbed.RouterServerIf)
	for _, f := range families {
		if got := peerSeen(t, b.Client, hostPort(f.server, 8080)); got != f.routerServer {
			t.Errorf("%s client->server: server saw %s, want %s", f.name, got, f.routerServer)
		}
		if got := peerSeen(t, b.Server, hostPort(f.client, 8081)); got != f.routerClient {
			t.Errorf("%s server->client: client saw %s, want %s", f.name, got, f.routerClient)
		}
	}
	s := b.status()
	if got := s.counter("syn_diverted"); got != 4 {
		t.Errorf("syn_diverted = %d, want 4 (one per connection, none for the proxy's own dials)", got)
	}
	if s.Daemon == nil || s.Daemon.Stats.Accepted != 4 {
		t.Errorf("daemon stats %+v, want 4 accepted", s.Daemon)
	}
}
