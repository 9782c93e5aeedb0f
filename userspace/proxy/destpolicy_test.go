// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"golang.org/x/sys/unix"
)

// fakeRoutes is a routing table: the kind of each address it lists, or
// fail for the addresses in failing; the rest are routed onward.
type fakeRoutes struct {
	kinds   map[netip.Addr]RouteKind
	failing map[netip.Addr]error
	asked   []netip.Addr
}

func (f *fakeRoutes) Route(a netip.Addr) (RouteKind, error) {
	f.asked = append(f.asked, a)
	if err := f.failing[a]; err != nil {
		return 0, err
	}
	return f.kinds[a], nil
}

var errLookup = errors.New("netlink: no buffer space")

// testHost is a host with addresses 10.0.0.1 and 2001:db8::1, the
// broadcast address of its subnet 10.0.0.0/24, a multicast route, an
// unreachable prefix and a lookup that fails.
func testHost() *fakeRoutes {
	a := netip.MustParseAddr
	return &fakeRoutes{
		kinds: map[netip.Addr]RouteKind{
			a("10.0.0.1"): RouteLocal, a("2001:db8::1"): RouteLocal, a("2001:db8::"): RouteLocal, // an IPv6 subnet-router anycast
			a("10.0.0.255"): RouteBroadcast, a("198.51.100.1"): RouteMulticast, a("203.0.113.9"): RouteUnreachable,
		},
		failing: map[netip.Addr]error{a("192.0.2.99"): errLookup},
	}
}

// TestDestPolicy is the destination policy matrix: this host's own
// addresses (v4, v6, IPv4-mapped), loopback, unspecified, link-local
// (metadata), multicast, limited and directed broadcast, --deny prefixes
// (an IPv4-mapped one too), a failed lookup; public and unroutable
// destinations are allowed.
func TestDestPolicy(t *testing.T) {
	deny := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd00:ab::/32"), netip.MustParsePrefix("::ffff:172.16.0.0/108")}
	d := NewDestPolicy(deny, testHost())
	for _, c := range []struct {
		want  conn.DenyReason
		addrs []string
	}{
		{conn.OwnAddress, []string{"10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "2001:db8::"}},
		{conn.Loopback, []string{"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"}},
		{conn.Unspecified, []string{"0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"}},
		{conn.LinkLocal, []string{"169.254.169.254", "169.254.0.1", "fe80::1", "::ffff:169.254.169.254"}},
		{conn.Multicast, []string{"224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::2", "::ffff:224.0.0.251", "198.51.100.1"}},
		{conn.Broadcast, []string{"255.255.255.255", "::ffff:255.255.255.255", "10.0.0.255", "::ffff:10.0.0.255"}},
		{conn.DenyPrefix, []string{"10.20.3.4", "::ffff:10.20.3.4", "fd00:ab::5", "172.16.1.1"}},
		{conn.RouteLookupFailed, []string{"192.0.2.99"}},
		// Public and private destinations elsewhere, and an unroutable one
		// (its dial fails by itself, as an upstream failure).
		{conn.NotDenied, []string{"8.8.8.8", "::ffff:8.8.8.8", "2001:4860::8888", "10.21.0.1", "10.0.0.2", "fd00:ac::5", "172.32.0.1", "203.0.113.9"}},
	} {
		for _, addr := range c.addrs {
			if got := reasonOf(t, d, netip.MustParseAddr(addr)); got != c.want {
				t.Errorf("%s: refused as %q, want %q", addr, got, c.want)
			}
		}
	}
	var de *DeniedError
	if err := d.Check(netip.MustParseAddr("192.0.2.99")); !errors.As(err, &de) || !errors.Is(err, errLookup) {
		t.Errorf("failed lookup: %v, want a *DeniedError wrapping the lookup's error", err)
	}
	if reasonOf(t, d, netip.Addr{}) != conn.Unspecified {
		t.Error("the zero address is allowed")
	}
}

// TestDestPolicyAsksRoutesLast: what the address alone or --deny refuses
// costs no route lookup, and the lookup gets the unmapped address.
func TestDestPolicyAsksRoutesLast(t *testing.T) {
	routes := testHost()
	d := NewDestPolicy([]netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, routes)
	for _, a := range []string{"127.0.0.1", "169.254.169.254", "ff02::1", "10.20.0.1", "::ffff:8.8.8.8"} {
		d.Check(netip.MustParseAddr(a))
	}
	if len(routes.asked) != 1 || routes.asked[0] != netip.MustParseAddr("8.8.8.8") {
		t.Errorf("route lookups %v, want only 8.8.8.8", routes.asked)
	}
	// Without a lookup (the zero policy) this host's addresses are unknown;
	// what the address alone says still holds.
	if reasonOf(t, DestPolicy{}, netip.MustParseAddr("10.0.0.1")) != conn.NotDenied || reasonOf(t, DestPolicy{}, netip.MustParseAddr("::1")) != conn.Loopback {
		t.Error("the zero policy")
	}
}

// reasonOf is why d refuses a (NotDenied: it does not).
func reasonOf(t *testing.T, d DestPolicy, a netip.Addr) conn.DenyReason {
	t.Helper()
	err := d.Check(a)
	if err == nil {
		return conn.NotDenied
	}
	var de *DeniedError
	if !errors.As(err, &de) {
		t.Fatalf("%s: %v is no *DeniedError", a, err)
	}
	return de.Reason
}

// TestHostRoutes: this host's routing tables say its own addresses are
// local, and another host's are not.
func TestHostRoutes(t *testing.T) {
	r, err := OpenHostRoutes()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifa := range addrs {
		p, err := netip.ParsePrefix(ifa.String())
		if err != nil || p.Addr().IsLinkLocalUnicast() {
			continue // a link-local address needs its interface: the policy refuses them all anyway
		}
		if kind, err := r.Route(p.Addr()); err != nil || kind != RouteLocal {
			t.Errorf("own address %s: route kind %d, %v; want local", p.Addr(), kind, err)
		}
	}
	if kind, err := r.Route(netip.MustParseAddr("198.51.100.77")); err != nil || kind == RouteLocal {
		t.Errorf("198.51.100.77: route kind %d, %v; want onward or unreachable", kind, err)
	}
}

// TestSetupRefusesDeniedDestination: the one setup path refuses a flow to
// a denied destination, split or warm, before its Upstream: the accepted
// leg is reset and the refusal counted by reason. A flow to the proxy's
// own listener is still a loop.
func TestSetupRefusesDeniedDestination(t *testing.T) {
	p := NewPipeline(nil, Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Dest: NewDestPolicy(nil, testHost())})
	defer p.Close()
	p.own[netip.MustParseAddrPort("127.0.0.1:5000")] = true
	up := upstreamFunc(func(context.Context, *conn.Conn, *Flow) (ServerLeg, error) {
		t.Error("the upstream was asked to connect")
		return ServerLeg{}, errors.New("no")
	})
	for _, c := range []struct {
		dst  string
		warm bool
	}{{"10.0.0.1:22", false}, {"[2001:db8::1]:22", true}, {"[::ffff:169.254.169.254]:80", true}, {"127.0.0.1:5000", false}} {
		client, leg := nettest.TCPPair(t)
		prepared := false
		f := &Flow{Leg: leg, LegName: "client leg", Client: netip.MustParseAddrPort("10.0.1.2:40000"), Dst: netip.MustParseAddrPort(c.dst), Warm: c.warm,
			Prepare: func(*Flow) error { prepared = true; return nil }}
		p.setup(t.Context(), f, up)
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := client.Read(make([]byte, 1)); n != 0 || !errors.Is(err, unix.ECONNRESET) {
			t.Errorf("%s: the client read %d bytes, %v; want a reset", c.dst, n, err)
		}
		if loop := c.dst == "127.0.0.1:5000"; prepared == loop {
			t.Errorf("%s: prepared %v: a loop is refused first, a denied destination once prepared (right before the dial)", c.dst, prepared)
		}
	}
	s := p.Table.Stats()
	if s.Accepted != 4 || s.Active != 0 || s.DestDenied != 3 || s.LoopRefused != 1 ||
		s.DestDeniedByReason["own_address"] != 2 || s.DestDeniedByReason["link_local"] != 1 {
		t.Errorf("stats %+v: want 3 refused destinations (2 own, 1 link-local) and 1 loop", s)
	}
}

// upstreamFunc is an Upstream made of a function.
type upstreamFunc func(context.Context, *conn.Conn, *Flow) (ServerLeg, error)

func (u upstreamFunc) Connect(ctx context.Context, c *conn.Conn, f *Flow) (ServerLeg, error) {
	return u(ctx, c, f)
}
