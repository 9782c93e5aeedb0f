package loader

// BPF unit tests of the tc classifier, in the style of Cilium's bpf/tests:
// the committed object runs under BPF_PROG_TEST_RUN on hand-built packets and
// every decision is checked by the counter it bumps (all the others must stay
// at zero), the skb mark it leaves and the pepsal_diverted entry it writes.
// bpf_fib_lookup and bpf_skc_lookup_tcp see the namespace of the thread that
// runs the program, so the tests build one of their own (a testbed.NS, the
// test beds' namespace): interfaces, routes and real sockets, nothing of the
// host's.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// needBPF lets `make unit` (-short, without BPF privileges) skip the tests
// that load BPF or make namespaces; anywhere else a missing privilege is a
// failure. It asks the kernel, not the uid: root in a user namespace (a
// rootless container) has euid 0 and no CAP_BPF.
func needBPF(t *testing.T) {
	t.Helper()
	if bpfAllowed() {
		return
	}
	if testing.Short() {
		t.Skip("needs BPF privileges (root on the host: BPF_PROG_TEST_RUN, network namespaces): runs in make test")
	}
	t.Fatal("needs BPF privileges (root on the host: BPF_PROG_TEST_RUN, network namespaces); without them run make unit")
}

// bpfAllowed says whether this process may create a BPF map.
var bpfAllowed = sync.OnceValue(func() bool {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return false
	}
	m.Close()
	return true
})

// skBuff is the kernel's struct __sk_buff (uapi/linux/bpf.h), the context of
// a tc program under BPF_PROG_TEST_RUN. The kernel reads mark, priority,
// ingress_ifindex, ifindex, cb, tstamp, wire_len and gso_* from it and
// refuses anything else non-zero; it writes mark back.
type skBuff struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Hash, TCClassid, Data, DataEnd, NapiID                                      uint32
	Family, RemoteIP4, LocalIP4                                                 uint32
	RemoteIP6, LocalIP6                                                         [4]uint32
	RemotePort, LocalPort, DataMeta                                             uint32
	FlowKeys                                                                    uint64
	Tstamp                                                                      uint64
	WireLen, GSOSegs                                                            uint32
	SK                                                                          uint64
	GSOSize                                                                     uint32
	TstampType                                                                  uint8
	_                                                                           [3]uint8
	HWTstamp                                                                    uint64
}

// checkCtxSize fails when a context struct written here does not have the
// size of the kernel's (from its BTF): the layout drifted.
func checkCtxSize(t *testing.T, name string, v any) {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var st *btf.Struct
	if err := spec.TypeByName(name, &st); err != nil {
		t.Fatalf("struct %s in kernel BTF: %v", name, err)
	}
	if got := binary.Size(v); got != int(st.Size) {
		t.Fatalf("Go mirror of struct %s is %d bytes, the kernel's %d", name, got, st.Size)
	}
}

const tcActUnspec = ^uint32(0) // TC_ACT_UNSPEC (-1): the classifier never drops or redirects

// loadForTest loads one of the committed objects with fresh maps (no pins);
// shared names the collection whose maps it takes, as the loader shares them
// through their pins.
func loadForTest(t *testing.T, spec *ebpf.CollectionSpec, shared *ebpf.Collection) *ebpf.Collection {
	t.Helper()
	repl := map[string]*ebpf.Map{}
	for name, m := range spec.Maps {
		m.Pinning = ebpf.PinNone // the test owns its maps; nothing on bpffs
		if shared != nil && shared.Maps[name] != nil {
			repl[name] = shared.Maps[name]
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		t.Fatalf("load: %v", verifierDetail(err))
	}
	t.Cleanup(coll.Close)
	return coll
}

// counterSet reads and resets pepsal_counters by name, as bpf/pepsal.h names them.
type counterSet struct {
	m        *ebpf.Map
	asserted map[string]bool // counters some case expected to move
}

func (c *counterSet) read(t *testing.T) map[string]uint64 {
	t.Helper()
	var perCPU []classifyCounters
	if err := c.m.Lookup(uint32(0), &perCPU); err != nil {
		t.Fatalf("read pepsal_counters: %v", err)
	}
	out := map[string]uint64{}
	typ := reflect.TypeOf(classifyCounters{})
	for i := 0; i < typ.NumField(); i++ {
		if !typ.Field(i).IsExported() {
			continue
		}
		for _, v := range perCPU {
			out[snake(typ.Field(i).Name)] += reflect.ValueOf(v).Field(i).Uint()
		}
	}
	return out
}

func (c *counterSet) reset(t *testing.T) {
	t.Helper()
	n, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.m.Put(uint32(0), make([]classifyCounters, n)); err != nil {
		t.Fatalf("reset pepsal_counters: %v", err)
	}
}

// expect fails unless the counters are exactly want (any counter not named
// must be 0). A name that is not a counter fails: a renamed counter cannot
// pass silently.
func (c *counterSet) expect(t *testing.T, want map[string]uint64) {
	t.Helper()
	diffs, err := diffCounters(c.read(t), want)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Error(d)
	}
	for name, v := range want {
		if v != 0 {
			c.asserted[name] = true
		}
	}
}

// diffCounters says how got differs from want (absent from want: 0), and
// errs on a wanted name that got does not have.
func diffCounters(got, want map[string]uint64) ([]string, error) {
	for name := range want {
		if _, ok := got[name]; !ok {
			return nil, fmt.Errorf("no counter %q in struct counters (bpf/pepsal.h)", name)
		}
	}
	var diffs []string
	for name, v := range got {
		if v != want[name] {
			diffs = append(diffs, fmt.Sprintf("counter %s = %d, want %d", name, v, want[name]))
		}
	}
	sort.Strings(diffs)
	return diffs, nil
}

// coverage fails for every counter whose name starts with one of prefixes and
// that no case expected to move: a new decision needs a case.
func (c *counterSet) coverage(t *testing.T, prefixes ...string) {
	t.Helper()
	for name := range c.read(t) {
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) && !c.asserted[name] {
				t.Errorf("counter %s is asserted by no case", name)
			}
		}
	}
}

func TestDiffCounters(t *testing.T) {
	got := map[string]uint64{"pkt_not_tcp": 1, "pkt_unparsed": 0}
	if _, err := diffCounters(got, map[string]uint64{"pkt_not_tpc": 1}); err == nil {
		t.Error("a counter name that does not exist was accepted")
	}
	if d, err := diffCounters(got, map[string]uint64{"pkt_not_tcp": 1}); err != nil || len(d) != 0 {
		t.Errorf("exact match: %v, %v", d, err)
	}
	if d, _ := diffCounters(got, map[string]uint64{"pkt_unparsed": 1}); len(d) != 2 {
		t.Errorf("one counter moved instead of another: diffs %q, want both", d)
	}
}

// Addresses of the classifier's test namespace.
var (
	ingressV4   = netip.MustParsePrefix("192.0.2.1/24") // in0: the intercepted interface
	ingressV6   = netip.MustParsePrefix("2001:db8:1::1/64")
	onwardNetV4 = netip.MustParsePrefix("198.51.100.1/24") // out0: where forwarded flows go
	onwardNetV6 = netip.MustParsePrefix("2001:db8:2::1/64")

	clientV4 = netip.MustParseAddr("192.0.2.10")
	clientV6 = netip.MustParseAddr("2001:db8:1::10")
	serverV4 = netip.MustParseAddr("198.51.100.7")
	serverV6 = netip.MustParseAddr("2001:db8:2::7")

	// One destination per kind of rejecting route.
	rejectRoutes = []struct {
		kind int
		name string
		v4   netip.Addr
		v6   netip.Addr
	}{
		{unix.RTN_UNREACHABLE, "unreachable", netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8:f::1")},
		{unix.RTN_BLACKHOLE, "blackhole", netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("2001:db8:f::2")},
		{unix.RTN_PROHIBIT, "prohibit", netip.MustParseAddr("203.0.113.3"), netip.MustParseAddr("2001:db8:f::3")},
	}
	// No route at all (the namespace has no default route).
	noRouteV4 = netip.MustParseAddr("10.99.0.1")
	noRouteV6 = netip.MustParseAddr("2001:db8:99::1")
)

// setupRouterNS makes the current namespace a small router: lo, the ingress
// veth in0, the onward veth out0, rejecting routes, forwarding on. It
// returns in0's ifindex.
func setupRouterNS(t *testing.T) int {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	var in0 netlink.Link
	for _, d := range []struct {
		name   string
		v4, v6 netip.Prefix
	}{{"in0", ingressV4, ingressV6}, {"out0", onwardNetV4, onwardNetV6}} {
		// veth, not dummy: this kernel has no dummy driver. The peer stays
		// in the namespace, up, so that the link has a carrier.
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: d.name}, PeerName: d.name + "p"}
		if err := netlink.LinkAdd(link); err != nil {
			t.Fatalf("add %s: %v", d.name, err)
		}
		if peer, err := netlink.LinkByName(d.name + "p"); err != nil || netlink.LinkSetUp(peer) != nil {
			t.Fatalf("%sp up: %v", d.name, err)
		}
		for _, p := range []netip.Prefix{d.v4, d.v6} {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if p.Addr().Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(link, addr); err != nil {
				t.Fatalf("address %s on %s: %v", p, d.name, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			t.Fatalf("%s up: %v", d.name, err)
		}
		if d.name == "in0" {
			in0 = link
		}
	}
	for _, r := range rejectRoutes {
		for _, dst := range []netip.Addr{r.v4, r.v6} {
			route := &netlink.Route{Dst: &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}, Type: r.kind}
			if err := netlink.RouteAdd(route); err != nil {
				t.Fatalf("%s route to %s: %v", r.name, dst, err)
			}
		}
	}
	// pepsal's policy routing, as Attach installs it. Its fwmark rule also
	// splits IPv4's local table from the main one (merged until a rule
	// exists), which the classifier's local-or-unroutable test relies on.
	if _, err := (Routing{Mark: testMark, Table: DefaultTable, Priority: DefaultRulePriority}).Install(); err != nil {
		t.Fatalf("policy routing: %v", err)
	}
	// bpf_fib_lookup answers "forwarding disabled" on an interface that does not forward.
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := writeSysctl(s, 1); err != nil {
			t.Fatal(err)
		}
	}
	// IPv6 local and prefix routes appear once the address is usable, which
	// even without DAD happens after the netlink call returns.
	for _, a := range []netip.Addr{ingressV6.Addr(), serverV6} {
		waitRoute(t, a)
	}
	return in0.Attrs().Index
}

// waitRoute waits until the kernel has a route to a (not a deadline on
// anything measured: only the setup's asynchrony).
func waitRoute(t *testing.T, a netip.Addr) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err = netlink.RouteGet(a.AsSlice()); err == nil {
			return
		}
	}
	t.Fatalf("no route to %s: %v", a, err)
}

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// pkt describes an Ethernet frame carrying TCP over IPv4 or IPv6.
type pkt struct {
	src, dst     netip.Addr
	sport, dport uint16
	flags        uint8
	tos          uint8  // IPv4 ToS or IPv6 traffic class
	proto        uint8  // IP protocol / first next header; 0 means TCP (use nextHdr for v6 0)
	nextHdr      *uint8 // IPv6 only: explicit first next header (hop-by-hop is 0)
	fragOff      uint16 // IPv4 only: fragment offset in 8-byte units
	ihl          uint8  // IPv4 only: header length in words; 0 means 5
	truncate     int    // drop this many bytes from the end
}

func (p pkt) bytes() []byte {
	eth := []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0, 0}
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], p.sport)
	binary.BigEndian.PutUint16(tcp[2:], p.dport)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	if p.flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], 2000)
	}
	tcp[12] = 5 << 4
	tcp[13] = p.flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	proto := p.proto
	if proto == 0 {
		proto = unix.IPPROTO_TCP
	}
	var out []byte
	if p.src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IP)
		ihl := p.ihl
		if ihl == 0 {
			ihl = 5
		}
		ip := make([]byte, 20)
		ip[0] = 4<<4 | ihl
		ip[1] = p.tos
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		binary.BigEndian.PutUint16(ip[6:], p.fragOff)
		ip[8] = 64
		ip[9] = proto
		src, dst := p.src.As4(), p.dst.As4()
		copy(ip[12:], src[:])
		copy(ip[16:], dst[:])
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		out = append(append(eth, ip...), tcp...)
	} else {
		binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IPV6)
		ip := make([]byte, 40)
		binary.BigEndian.PutUint32(ip[0:], 6<<28|uint32(p.tos)<<20)
		binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
		ip[6] = proto
		if p.nextHdr != nil {
			ip[6] = *p.nextHdr
		}
		ip[7] = 64
		src, dst := p.src.As16(), p.dst.As16()
		copy(ip[8:], src[:])
		copy(ip[24:], dst[:])
		out = append(append(eth, ip...), tcp...)
	}
	return out[:len(out)-p.truncate]
}

// classifyEnv is the classifier loaded in a test namespace.
type classifyEnv struct {
	ns       *testbed.NS
	ingress  int
	coll     *ebpf.Collection
	counters *counterSet
}

const testMark = 0x5e9a1

func (e *classifyEnv) run(t *testing.T, p []byte) (mark uint32) {
	t.Helper()
	in := skBuff{IngressIfindex: uint32(e.ingress), Ifindex: uint32(e.ingress)}
	var out skBuff
	ret, err := e.coll.Programs["pepsal_classify"].Run(&ebpf.RunOptions{Data: p, Context: in, ContextOut: &out})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	if ret != tcActUnspec {
		t.Errorf("classifier returned %d, want TC_ACT_UNSPEC", int32(ret))
	}
	return out.Mark
}

func (e *classifyEnv) put(t *testing.T, mapName string, k, v any) {
	t.Helper()
	if err := e.coll.Maps[mapName].Put(k, v); err != nil {
		t.Fatalf("%s: put %v: %v", mapName, k, err)
	}
}

func (e *classifyEnv) del(t *testing.T, mapName string, k any) {
	t.Helper()
	if err := e.coll.Maps[mapName].Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("%s: delete %v: %v", mapName, k, err)
	}
}

func flowKeyOf(p pkt) classifyFlowKey {
	k := classifyFlowKey{ClientAddr: p.src.As16(), ServerAddr: p.dst.As16(), ClientPort: p.sport, ServerPort: p.dport, Family: unix.AF_INET6}
	if p.src.Is4() {
		k.Family = unix.AF_INET
	}
	return k
}

// listenTCP listens on loopback in the current namespace, without MPTCP (a
// SOCKMAP refuses MPTCP sockets).
// excludeForTest puts the keys of --exclude pfx in pepsal_exclude until the
// end of the test.
func excludeForTest(t *testing.T, e *classifyEnv, pfx netip.Prefix) {
	for _, k := range ExcludeKeys(pfx) {
		e.put(t, "pepsal_exclude", k, uint8(1))
		t.Cleanup(func() { e.del(t, "pepsal_exclude", k) })
	}
}

func listenTCP(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(t.Context(), network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// registerListener puts l in pepsal_listen at slot, as the daemon does.
func registerListener(t *testing.T, m *ebpf.Map, slot uint32, l *net.TCPListener) {
	t.Helper()
	raw, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var uerr error
	if err := raw.Control(func(fd uintptr) { uerr = m.Update(slot, uint64(fd), ebpf.UpdateAny) }); err != nil {
		t.Fatal(err)
	}
	if uerr != nil {
		t.Fatalf("pepsal_listen[%d]: %v", slot, uerr)
	}
	t.Cleanup(func() { _ = m.Delete(slot) })
}

// connPair is an established loopback connection; the dialer's side is c.
type connPair struct {
	c, s *net.TCPConn
}

func dialPair(t *testing.T, network, addr string) connPair {
	t.Helper()
	l := listenTCP(t, network, addr)
	d := net.Dialer{}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(t.Context(), network, l.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addr(), err)
	}
	s, err := l.AcceptTCP()
	if err != nil {
		c.Close()
		t.Fatalf("accept: %v", err)
	}
	p := connPair{c.(*net.TCPConn), s}
	t.Cleanup(func() { p.c.Close(); p.s.Close() })
	return p
}

// timeWait leaves the dialer's side of p in TIME_WAIT: it closes first, and
// its reading EOF means the other side's FIN arrived, which is the moment the
// kernel turns the socket into a TIME_WAIT one.
func timeWait(t *testing.T, p connPair) {
	t.Helper()
	if err := p.c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(p.s); err != nil {
		t.Fatalf("server side: %v", err)
	}
	if err := p.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(p.c); err != nil {
		t.Fatalf("dialer side: %v", err)
	}
	if err := p.c.Close(); err != nil {
		t.Fatal(err)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

func TestClassify(t *testing.T) {
	needBPF(t)
	checkCtxSize(t, "__sk_buff", skBuff{})
	ns := testbed.NewTestNS(t, "loader-classify")
	ns.EnterForTest(t)
	ingress := setupRouterNS(t)

	spec, err := loadClassify()
	if err != nil {
		t.Fatal(err)
	}
	coll := loadForTest(t, spec, nil)
	e := &classifyEnv{ns: ns, ingress: ingress, coll: coll,
		counters: &counterSet{m: coll.Maps["pepsal_counters"], asserted: map[string]bool{}}}
	e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark})
	for _, port := range []uint16{80, 443} {
		e.put(t, "pepsal_ports", port, uint8(1))
	}

	// case runs one packet in a subtest of its own, from clean counters.
	type tcase struct {
		name string
		p    pkt
		raw  []byte            // instead of p
		want map[string]uint64 // counters
		mark bool              // the skb leaves with the diversion mark
		// setup runs in the namespace before the packet; it may change p.
		setup func(t *testing.T, p *pkt)
	}
	run := func(tc tcase) {
		t.Run(tc.name, func(t *testing.T) {
			e.ns.EnterForTest(t)
			p := tc.p
			if tc.setup != nil {
				tc.setup(t, &p)
			}
			e.counters.reset(t)
			data := tc.raw
			if data == nil {
				data = p.bytes()
			}
			mark := e.run(t, data)
			e.counters.expect(t, tc.want)
			switch {
			case tc.mark && mark != testMark:
				t.Errorf("mark %#x, want the diversion mark %#x", mark, testMark)
			case !tc.mark && mark != 0:
				t.Errorf("mark %#x, want none", mark)
			}
			if tc.raw == nil && p.flags == tcpSYN {
				var info classifyDivertInfo
				err := e.coll.Maps["pepsal_diverted"].Lookup(flowKeyOf(p), &info)
				switch {
				case tc.mark && err != nil:
					t.Errorf("diverted SYN has no pepsal_diverted entry: %v", err)
				case tc.mark && info.Tos != uint32(p.tos):
					t.Errorf("pepsal_diverted tos %#x, want the SYN's %#x", info.Tos, p.tos)
				case !tc.mark && err == nil:
					t.Errorf("bypassed SYN has a pepsal_diverted entry %+v", info)
				}
				e.del(t, "pepsal_diverted", flowKeyOf(p))
			}
		})
	}
	one := func(name string) map[string]uint64 { return map[string]uint64{name: 1} }
	u8 := func(v uint8) *uint8 { return &v }

	v4syn := pkt{src: clientV4, dst: serverV4, sport: 40000, dport: 80, flags: tcpSYN, tos: 0xb8}
	v6syn := pkt{src: clientV6, dst: serverV6, sport: 40000, dport: 443, flags: tcpSYN, tos: 0x28}
	for _, fam := range []struct {
		name string
		syn  pkt
	}{{"v4", v4syn}, {"v6", v6syn}} {
		syn := fam.syn
		ack := syn
		ack.flags = tcpACK

		// Not for the classifier at all.
		udp := syn
		udp.proto = unix.IPPROTO_UDP
		run(tcase{name: fam.name + "/udp", p: udp, want: one("pkt_not_tcp")})

		// Cannot be classified: the TCP header is cut short. (A frame cut
		// inside its IP header cannot be tested: BPF_PROG_TEST_RUN refuses
		// it with EINVAL on this kernel, before the program runs.)
		run(tcase{name: fam.name + "/truncated_tcp", p: pkt{src: syn.src, dst: syn.dst, flags: tcpSYN, truncate: 1}, want: one("pkt_unparsed")})
		run(tcase{name: fam.name + "/no_tcp_header", p: pkt{src: syn.src, dst: syn.dst, flags: tcpSYN, truncate: 20}, want: one("pkt_unparsed")})

		// Packets of existing flows follow their socket.
		run(tcase{name: fam.name + "/ack_no_socket_forwarded", p: ack, want: one("pkt_forwarded")})
		synack := syn
		synack.flags = tcpSYN | tcpACK
		run(tcase{name: fam.name + "/synack_no_socket_forwarded", p: synack, want: one("pkt_forwarded")})
		rst := syn
		rst.flags = tcpRST
		run(tcase{name: fam.name + "/rst_no_socket_forwarded", p: rst, want: one("pkt_forwarded")})

		lo, network := "127.0.0.1:0", "tcp4"
		if fam.name == "v6" {
			lo, network = "[::1]:0", "tcp6"
		}
		run(tcase{name: fam.name + "/ack_local_socket", p: ack, want: one("pkt_local_socket"), mark: true,
			setup: func(t *testing.T, p *pkt) {
				c := dialPair(t, network, lo)
				// As the dialer's packets arrive at the accepted socket.
				from, to := addrPort(c.c.LocalAddr()), addrPort(c.c.RemoteAddr())
				p.src, p.sport, p.dst, p.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
			}})
		run(tcase{name: fam.name + "/fin_time_wait_forwarded", p: pkt{flags: tcpFIN | tcpACK}, want: one("pkt_timewait_forwarded"),
			setup: func(t *testing.T, p *pkt) {
				c := dialPair(t, network, lo)
				from, to := addrPort(c.s.LocalAddr()), addrPort(c.s.RemoteAddr())
				timeWait(t, c)
				// The acceptor's side again: only the dialer's TIME_WAIT socket matches.
				p.src, p.sport, p.dst, p.dport = from.Addr(), from.Port(), to.Addr(), to.Port()
			}})
		run(tcase{name: fam.name + "/ack_to_listener_forwarded", p: ack, want: one("pkt_forwarded"),
			setup: func(t *testing.T, p *pkt) {
				// A listener matches any flow to its port: it does not make one local.
				to := addrPort(listenTCP(t, network, lo).Addr())
				p.src, p.dst, p.dport = to.Addr(), to.Addr(), to.Port()
			}})

		// First SYNs: every reason not to divert, in the classifier's order.
		run(tcase{name: fam.name + "/syn_return_iface", p: syn, want: one("syn_bypass_return_iface"),
			setup: func(t *testing.T, p *pkt) {
				e.put(t, "pepsal_ifaces", uint32(e.ingress), classifyIfaceState{ReturnOnly: 1})
				t.Cleanup(func() { e.del(t, "pepsal_ifaces", uint32(e.ingress)) })
			}})
		noPort := syn
		noPort.dport = 22
		run(tcase{name: fam.name + "/syn_port_not_intercepted", p: noPort, want: one("syn_bypass_port")})
		run(tcase{name: fam.name + "/syn_excluded", p: syn, want: one("syn_bypass_excluded"),
			setup: func(t *testing.T, p *pkt) {
				excludeForTest(t, e, netip.PrefixFrom(p.dst, p.dst.BitLen()-8))
			}})
		// An IPv6 prefix excludes IPv6 destinations only, even ::/0, which
		// as one LPM key would cover the v4-mapped IPv4 ones; an IPv4
		// prefix, even 0.0.0.0/0, only IPv4 ones.
		otherFamily, sameFamily := "0.0.0.0/0", "::/0"
		if fam.name == "v4" {
			otherFamily, sameFamily = sameFamily, otherFamily
		}
		run(tcase{name: fam.name + "/syn_not_excluded_by_" + otherFamily, p: syn, want: one("syn_bypass_no_listener"),
			setup: func(t *testing.T, p *pkt) { excludeForTest(t, e, netip.MustParsePrefix(otherFamily)) }})
		run(tcase{name: fam.name + "/syn_excluded_by_" + sameFamily, p: syn, want: one("syn_bypass_excluded"),
			setup: func(t *testing.T, p *pkt) { excludeForTest(t, e, netip.MustParsePrefix(sameFamily)) }})
		local := syn
		local.dst = ingressV4.Addr()
		if fam.name == "v6" {
			local.dst = ingressV6.Addr()
		}
		run(tcase{name: fam.name + "/syn_to_router_itself", p: local, want: one("syn_bypass_local")})
		for _, r := range rejectRoutes {
			rej := syn
			rej.dst = r.v4
			if fam.name == "v6" {
				rej.dst = r.v6
			}
			run(tcase{name: fam.name + "/syn_" + r.name + "_route", p: rej, want: one("syn_bypass_unroutable")})
		}
		// No route at all: the kernel drops it (net unreachable), it is not
		// for the router itself.
		noRoute := syn
		noRoute.dst = noRouteV4
		if fam.name == "v6" {
			noRoute.dst = noRouteV6
		}
		run(tcase{name: fam.name + "/syn_no_route", p: noRoute, want: one("syn_bypass_unroutable")})
		run(tcase{name: fam.name + "/syn_no_listener", p: syn, want: one("syn_bypass_no_listener")})
		slot, other := uint32(ListenerV4), uint32(ListenerV6)
		if fam.name == "v6" {
			slot, other = other, slot
		}
		run(tcase{name: fam.name + "/syn_other_family_listener_only", p: syn, want: one("syn_bypass_no_listener"),
			setup: func(t *testing.T, p *pkt) {
				otherNet, otherLo := "tcp6", "[::1]:0"
				if network == "tcp6" {
					otherNet, otherLo = "tcp4", "127.0.0.1:0"
				}
				registerListener(t, e.coll.Maps["pepsal_listen"], other, listenTCP(t, otherNet, otherLo))
			}})
		withListener := func(t *testing.T, _ *pkt) {
			registerListener(t, e.coll.Maps["pepsal_listen"], slot, listenTCP(t, network, lo))
		}
		// Past --max-conns the daemon sets admission.full: fail open.
		run(tcase{name: fam.name + "/syn_proxy_full", p: syn, want: one("syn_bypass_full"),
			setup: func(t *testing.T, p *pkt) {
				withListener(t, p)
				e.put(t, "pepsal_admission", uint32(0), classifyAdmission{Full: 1})
				t.Cleanup(func() { e.put(t, "pepsal_admission", uint32(0), classifyAdmission{}) })
			}})
		run(tcase{name: fam.name + "/syn_diverted", p: syn, want: one("syn_diverted"), mark: true, setup: withListener})
		allPorts := noPort
		run(tcase{name: fam.name + "/syn_diverted_all_ports", p: allPorts, want: one("syn_diverted"), mark: true,
			setup: func(t *testing.T, p *pkt) {
				withListener(t, p)
				e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark, AllPorts: 1})
				t.Cleanup(func() { e.put(t, "pepsal_config", uint32(0), classifyConfig{Mark: testMark}) })
			}})
		// A SYN to an intercepted port does not skip the later checks.
		for _, r := range rejectRoutes[:1] {
			rej := syn
			rej.dst = r.v4
			if fam.name == "v6" {
				rej.dst = r.v6
			}
			run(tcase{name: fam.name + "/syn_unroutable_with_listener", p: rej, want: one("syn_bypass_unroutable"), setup: withListener})
		}
	}

	// IPv4 specifics: a later fragment has no TCP header; so has a header
	// length below 5 words.
	frag := v4syn
	frag.fragOff = 185
	run(tcase{name: "v4/later_fragment", p: frag, want: one("pkt_unparsed")})
	firstFrag := v4syn
	firstFrag.fragOff = 0x2000 // more fragments, offset 0: the TCP header is here
	run(tcase{name: "v4/first_fragment_classified", p: firstFrag, want: one("syn_bypass_no_listener")})
	badIHL := v4syn
	badIHL.ihl = 4
	run(tcase{name: "v4/ihl_below_5", p: badIHL, want: one("pkt_unparsed")})
	longIHL := v4syn
	longIHL.ihl = 15 // options that would end past the frame: no room for TCP after them
	run(tcase{name: "v4/ihl_past_end", p: longIHL, want: one("pkt_unparsed")})

	// IPv6 extension headers before TCP: forwarded unsplit, counted unparsed.
	for _, x := range []struct {
		name string
		nh   uint8
	}{{"hop_by_hop", 0}, {"routing", 43}, {"fragment", 44}, {"dest_opts", 60}} {
		p := v6syn
		p.nextHdr = u8(x.nh)
		run(tcase{name: "v6/ext_" + x.name, p: p, want: one("pkt_unparsed")})
	}
	noNext := v6syn
	noNext.nextHdr = u8(59) // no next header: not TCP, and nothing to parse
	run(tcase{name: "v6/no_next_header", p: noNext, want: one("pkt_not_tcp")})

	// Neither IPv4 nor IPv6.
	arp := v4syn.bytes()
	binary.BigEndian.PutUint16(arp[12:], unix.ETH_P_ARP)
	run(tcase{name: "arp", raw: arp, want: one("pkt_not_tcp")})
	run(tcase{name: "ethernet_header_only", raw: arp[:14], want: one("pkt_not_tcp")})

	// No readable config: pepsal_config is an array, whose lookup cannot
	// miss, so this case loads the classifier with it as an empty hash.
	t.Run("no_config", func(t *testing.T) {
		e.ns.EnterForTest(t)
		spec, err := loadClassify()
		if err != nil {
			t.Fatal(err)
		}
		spec.Maps["pepsal_config"].Type = ebpf.Hash
		coll := loadForTest(t, spec, nil)
		ne := &classifyEnv{ns: e.ns, ingress: e.ingress, coll: coll,
			counters: &counterSet{m: coll.Maps["pepsal_counters"], asserted: e.counters.asserted}}
		ne.counters.reset(t)
		if mark := ne.run(t, v4syn.bytes()); mark != 0 {
			t.Errorf("mark %#x, want none", mark)
		}
		ne.counters.expect(t, one("pkt_no_config"))
	})

	if !t.Failed() {
		e.counters.coverage(t, "syn_", "pkt_")
	}
}
