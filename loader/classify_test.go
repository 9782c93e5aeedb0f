// SPDX-License-Identifier: Apache-2.0

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
	return e.runGSO(t, p, 0)
}

// runGSO runs p as a GSO skb of segments of gsoSize bytes (0: not GSO).
func (e *classifyEnv) runGSO(t *testing.T, p []byte, gsoSize uint32) (mark uint32) {
	t.Helper()
	in := skBuff{IngressIfindex: uint32(e.ingress), Ifindex: uint32(e.ingress), GSOSize: gsoSize}
	if gsoSize != 0 {
		in.GSOSegs = uint32(len(p))/gsoSize + 1
	}
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

// tcase is one packet through the classifier.
type tcase struct {
	name string
	p    pkt
	raw  []byte            // instead of p
	want map[string]uint64 // counters
	mark bool              // the skb leaves with the diversion mark
	gso  uint32            // GSO segment size (0: not a GSO skb)
	// divertFlags are the pepsal_diverted entry's flags of a diverted SYN.
	divertFlags uint32
	// setup runs in the namespace before the packet; it may change p.
	setup func(t *testing.T, p *pkt)
}

func one(name string) map[string]uint64 { return map[string]uint64{name: 1} }

// check runs tc in a subtest of its own, from clean counters: the counters,
// the mark and, for a SYN that opens a flow, the pepsal_diverted entry
// (there exactly when the SYN is diverted).
func (e *classifyEnv) check(t *testing.T, tc tcase) {
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
		mark := e.runGSO(t, data, tc.gso)
		e.counters.expect(t, tc.want)
		switch {
		case tc.mark && mark != testMark:
			t.Errorf("mark %#x, want the diversion mark %#x", mark, testMark)
		case !tc.mark && mark != 0:
			t.Errorf("mark %#x, want none", mark)
		}
		if tc.raw == nil && p.icmp == nil && p.flags&(tcpSYN|tcpACK) == tcpSYN {
			e.checkDiverted(t, p, tc.mark, tc.divertFlags)
		}
	})
}

func (e *classifyEnv) checkDiverted(t *testing.T, p pkt, diverted bool, flags uint32) {
	t.Helper()
	var info classifyDivertInfo
	err := e.coll.Maps["pepsal_diverted"].Lookup(flowKeyOf(p), &info)
	switch {
	case diverted && err != nil:
		t.Errorf("diverted SYN has no pepsal_diverted entry: %v", err)
	case diverted && info.Tos != uint32(p.tos):
		t.Errorf("pepsal_diverted tos %#x, want the SYN's %#x", info.Tos, p.tos)
	case diverted && info.Flags != flags:
		t.Errorf("pepsal_diverted flags %#x, want %#x", info.Flags, flags)
	case !diverted && err == nil:
		t.Errorf("bypassed SYN has a pepsal_diverted entry %+v", info)
	}
	e.del(t, "pepsal_diverted", flowKeyOf(p))
}
