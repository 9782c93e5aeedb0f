// SPDX-License-Identifier: Apache-2.0

package loader

// BPF unit tests of the sk_lookup steering program and the relay verdict,
// under BPF_PROG_TEST_RUN, with the maps shared as the loader shares them.

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// skLookup is the kernel's struct bpf_sk_lookup, the context of an sk_lookup
// program under BPF_PROG_TEST_RUN. The kernel reads family..local_port (and
// refuses the rest non-zero) and writes back in Cookie the cookie of the
// socket the program selected (0: none).
type skLookup struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      [4]byte // network byte order
	RemoteIP6      [16]byte
	RemotePort     uint16 // network byte order
	_              uint16
	LocalIP4       [4]byte
	LocalIP6       [16]byte
	LocalPort      uint32 // host byte order
	IngressIfindex uint32
	_              uint32
}

func lookupCtx(client, server netip.AddrPort) skLookup {
	c := skLookup{Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP, LocalPort: uint32(server.Port())}
	c.RemotePort = uint16(client.Port())>>8 | uint16(client.Port())<<8
	if client.Addr().Is4() {
		c.Family = unix.AF_INET
		c.RemoteIP4, c.LocalIP4 = client.Addr().As4(), server.Addr().As4()
	} else {
		c.RemoteIP6, c.LocalIP6 = client.Addr().As16(), server.Addr().As16()
	}
	return c
}

// socketCookie is SO_COOKIE of l, the value sk_lookup's test run reports.
func socketCookie(t *testing.T, l *net.TCPListener) uint64 {
	t.Helper()
	raw, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var gerr error
	if err := raw.Control(func(fd uintptr) { cookie, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("SO_COOKIE: %v", gerr)
	}
	return cookie
}

func TestSteer(t *testing.T) {
	needBPF(t)
	checkCtxSize(t, "bpf_sk_lookup", skLookup{})
	classifySpec, err := loadClassify()
	if err != nil {
		t.Fatal(err)
	}
	maps := loadForTest(t, classifySpec, nil)
	steerSpec, err := loadSteer()
	if err != nil {
		t.Fatal(err)
	}
	steer := loadForTest(t, steerSpec, maps)
	for _, name := range []string{"pepsal_counters", "pepsal_diverted", "pepsal_listen"} {
		if !sameMap(t, steer.Maps[name], maps.Maps[name]) {
			t.Fatalf("steer has its own %s: it must share the classifier's", name)
		}
	}
	counters := &counterSet{m: maps.Maps["pepsal_counters"], asserted: map[string]bool{}}
	diverted := maps.Maps["pepsal_diverted"]
	listen := maps.Maps["pepsal_listen"]

	l4 := listenTCP(t, "tcp4", "127.0.0.1:0")
	l6 := listenTCP(t, "tcp6", "[::1]:0")

	type tcase struct {
		name     string
		client   netip.AddrPort
		server   netip.AddrPort
		protocol uint32 // 0: TCP
		divert   bool   // the classifier diverted this SYN (pepsal_diverted entry)
		slots    map[uint32]*net.TCPListener
		want     map[string]uint64
		selected *net.TCPListener // the socket the lookup must end on; nil: none (the kernel's own lookup)
	}
	c4, s4 := netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.7:80")
	c6, s6 := netip.MustParseAddrPort("[2001:db8:1::10]:40000"), netip.MustParseAddrPort("[2001:db8:2::7]:443")
	both := map[uint32]*net.TCPListener{ListenerV4: l4, ListenerV6: l6}
	cases := []tcase{
		{name: "v4/diverted_assigned", client: c4, server: s4, divert: true, slots: both, want: map[string]uint64{"steer_assigned": 1}, selected: l4},
		{name: "v6/diverted_assigned", client: c6, server: s6, divert: true, slots: both, want: map[string]uint64{"steer_assigned": 1}, selected: l6},
		// Not diverted: the router's own services and pepsal's own dials are
		// none of sk_lookup's business, and nothing is counted for them.
		{name: "v4/not_diverted_untouched", client: c4, server: s4, slots: both, want: map[string]uint64{}},
		{name: "v6/not_diverted_untouched", client: c6, server: s6, slots: both, want: map[string]uint64{}},
		{name: "v4/udp_untouched", client: c4, server: s4, protocol: unix.IPPROTO_UDP, divert: true, slots: both, want: map[string]uint64{}},
		// Diverted, but the daemon is gone (its listener left the map).
		{name: "v4/diverted_no_listener", client: c4, server: s4, divert: true, slots: map[uint32]*net.TCPListener{ListenerV6: l6}, want: map[string]uint64{"steer_no_listener": 1}},
		{name: "v6/diverted_no_listener", client: c6, server: s6, divert: true, slots: map[uint32]*net.TCPListener{ListenerV4: l4}, want: map[string]uint64{"steer_no_listener": 1}},
		// bpf_sk_assign refuses an IPv4 socket for an IPv6 lookup.
		{name: "v6/diverted_assign_failed", client: c6, server: s6, divert: true, slots: map[uint32]*net.TCPListener{ListenerV6: l4}, want: map[string]uint64{"steer_assign_failed": 1}},
	}
	prog := steer.Programs["pepsal_steer"]
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, slot := range []uint32{ListenerV4, ListenerV6} {
				var cookie uint64
				if l := tc.slots[slot]; l != nil {
					registerListener(t, listen, slot, l)
				} else if listen.Lookup(slot, &cookie) == nil {
					if err := listen.Delete(slot); err != nil {
						t.Fatalf("empty pepsal_listen[%d]: %v", slot, err)
					}
				}
			}
			key := classifyFlowKey{ClientAddr: tc.client.Addr().As16(), ServerAddr: tc.server.Addr().As16(),
				ClientPort: tc.client.Port(), ServerPort: tc.server.Port(), Family: unix.AF_INET6}
			if tc.client.Addr().Is4() {
				key.Family = unix.AF_INET
			}
			if tc.divert {
				if err := diverted.Put(key, classifyDivertInfo{Tos: 0xb8}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = diverted.Delete(key) })
			}
			counters.reset(t)
			in := lookupCtx(tc.client, tc.server)
			if tc.protocol != 0 {
				in.Protocol = tc.protocol
			}
			var out skLookup
			ret, err := prog.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
			if err != nil {
				t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
			}
			if ret != 1 { // SK_PASS: a lookup is never dropped
				t.Errorf("steer returned %d, want SK_PASS", ret)
			}
			counters.expect(t, tc.want)
			var want uint64
			if tc.selected != nil {
				want = socketCookie(t, tc.selected)
			}
			if out.Cookie != want {
				t.Errorf("selected socket cookie %d, want %d", out.Cookie, want)
			}
			// The entry stays: sock_ops and the daemon read it after the accept.
			if tc.divert {
				var info classifyDivertInfo
				if err := diverted.Lookup(key, &info); err != nil {
					t.Errorf("pepsal_diverted entry gone after the lookup: %v", err)
				}
			}
		})
	}
	if !t.Failed() {
		counters.coverage(t, "steer_")
	}
}

func sameMap(t *testing.T, a, b *ebpf.Map) bool {
	t.Helper()
	if a == nil || b == nil {
		return false
	}
	ia, err := a.Info()
	if err != nil {
		t.Fatal(err)
	}
	ib, err := b.Info()
	if err != nil {
		t.Fatal(err)
	}
	ida, _ := ia.ID()
	idb, _ := ib.ID()
	return ida == idb
}

// TestRelayVerdictNeedsASocket records why the relay verdict has no BPF unit
// test: an sk_skb program cannot run under BPF_PROG_TEST_RUN (the kernel has
// no test_run for BPF_PROG_TYPE_SK_SKB), so relay_pass_unknown and the other
// relay_* decisions are covered only by the integration tests on real sockets
// (tests/integration, TestSockmap). When a kernel offers it, this test fails
// and asks for the unit test.
func TestRelayVerdictNeedsASocket(t *testing.T) {
	needBPF(t)
	var un *Unsupported
	if err := ProbeKernelRelay(); errors.As(err, &un) {
		t.Skipf("%v", err) // the verdict does not even load here
	}
	classifySpec, err := loadClassify()
	if err != nil {
		t.Fatal(err)
	}
	maps := loadForTest(t, classifySpec, nil)
	relaySpec, err := loadRelay()
	if err != nil {
		t.Fatal(err)
	}
	relay := loadForTest(t, relaySpec, maps)
	pkt := pkt{src: clientV4, dst: serverV4, sport: 40000, dport: 80, flags: tcpACK}.bytes()
	_, err = relay.Programs["pepsal_verdict"].Run(&ebpf.RunOptions{Data: pkt})
	if err == nil {
		t.Fatal("BPF_PROG_TEST_RUN now runs sk_skb programs: write the relay verdict's unit test (relay_pass_unknown first)")
	}
	t.Logf("sk_skb test run: %v", err)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("sk_skb test run: %v, want not supported", err)
	}
}
