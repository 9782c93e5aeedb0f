// Package loader loads, attaches, pins and detaches pepsal's BPF side (the tc
// classifier, the sk_lookup steering program and their maps) and the policy
// routing it needs, per network namespace.
package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults for the policy routing; chosen to stay clear of common marks and tables.
const (
	DefaultMark         = 0x5e9a1
	DefaultTable        = 5091
	DefaultRulePriority = 5091
)

// Listener slots in pepsal_listen.
const (
	ListenerV4 = 0
	ListenerV6 = 1
)

// Config is what an attachment intercepts.
type Config struct {
	Ifaces       []string
	ReturnIfaces []string // only return traffic of local sockets is taken here (transparent mode)
	Ports        []uint16 // empty: every port
	Exclude      []netip.Prefix
	Routing      Routing
	TCMode       string // "auto" (tcx, else clsact), "tcx" or "clsact"
	// MaxConns is how many connections the per-connection maps must hold
	// (the daemon's --max-conns plus its accept queues); 0: DefaultMapConns.
	// It sizes a new attachment; an existing one must already hold it.
	MaxConns int
	// Daemon: a `pepsal run` attaches. It owns an attachment it creates, or
	// one whose daemon died, and removes it when it stops (DetachOwned).
	Daemon bool
}

// Attachment is an open handle on the pinned objects of this namespace.
type Attachment struct {
	Dir   string
	maps  classifyMaps
	relay relayMaps
}

// Close releases the handle; the attachment itself stays (it is pinned).
func (a *Attachment) Close() error {
	return errors.Join(a.maps.Close(), a.relay.Close())
}

// ErrNotAttached means there is no pepsal attachment in this network namespace.
var ErrNotAttached = errors.New("pepsal is not attached in this network namespace")

// CheckKernel names the first kernel feature pepsal needs and does not find.
func CheckKernel() error {
	checks := []struct {
		what string
		err  func() error
	}{
		{"tc BPF programs", func() error { return features.HaveProgramType(ebpf.SchedCLS) }},
		{"sk_lookup BPF programs (Linux >= 5.9)", func() error { return features.HaveProgramType(ebpf.SkLookup) }},
		{"bpf_sk_assign from sk_lookup (Linux >= 5.9)", func() error { return features.HaveProgramHelper(ebpf.SkLookup, asm.FnSkAssign) }},
		{"bpf_skc_lookup_tcp from tc (Linux >= 5.2)", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkcLookupTcp) }},
		{"bpf_fib_lookup from tc (Linux >= 4.18)", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnFibLookup) }},
		{"SOCKMAP maps", func() error { return features.HaveMapType(ebpf.SockMap) }},
		{"LRU hash maps", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"LPM trie maps", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
	}
	for _, c := range checks {
		if err := c.err(); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("kernel lacks %s", c.what)
			}
			return fmt.Errorf("probe kernel for %s: %w", c.what, err)
		}
	}
	return nil
}

// ResolveIfaces maps interface names to indexes, failing on the first unknown one.
func ResolveIfaces(names []string) ([]int, error) {
	idx := make([]int, 0, len(names))
	for _, name := range names {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("unknown interface %q", name)
		}
		idx = append(idx, ifc.Index)
	}
	return idx, nil
}

// Attach attaches pepsal to cfg.Ifaces in the current network namespace and
// pins everything. Attaching again updates the policy and adds interfaces that
// are missing; it never duplicates anything. On error nothing this call added
// stays attached. Pins left by a dead namespace that had this one's inode
// number are removed first, never adopted.
func Attach(cfg Config) (*Attachment, error) {
	ifindexes, err := ResolveIfaces(cfg.Ifaces)
	if err != nil {
		return nil, err
	}
	returnIndexes, err := ResolveIfaces(cfg.ReturnIfaces)
	if err != nil {
		return nil, err
	}
	if cfg.Routing == (Routing{}) {
		cfg.Routing = Routing{Mark: DefaultMark, Table: DefaultTable, Priority: DefaultRulePriority}
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMapConns
	}
	if cfg.MaxConns < 0 || cfg.MaxConns > MaxMapConns {
		return nil, fmt.Errorf("maps for %d connections: want 1 to %d", cfg.MaxConns, MaxMapConns)
	}
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(); err != nil {
		return nil, err
	}
	unlock, err := lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	dir, err := PinDir()
	if err != nil {
		return nil, err
	}
	var foreign *ForeignPinsError
	if err := foreignPins(dir); errors.As(err, &foreign) {
		if err := removeForeignPins(dir); err != nil {
			return nil, fmt.Errorf("remove the pins of a dead network namespace: %w", err)
		}
		slog.Info("removed the pins of a dead network namespace", "dir", dir, "why", foreign.Reason)
	} else if err != nil {
		return nil, err
	}

	var targets []target
	for i, idx := range ifindexes {
		targets = append(targets, target{cfg.Ifaces[i], idx, false})
	}
	for i, idx := range returnIndexes {
		if !slices.Contains(ifindexes, idx) {
			targets = append(targets, target{cfg.ReturnIfaces[i], idx, true})
		}
	}

	fresh := !exists(filepath.Join(dir, pinConfig))
	if fresh {
		var own owner
		if cfg.Daemon {
			if own, err = self(); err != nil {
				return nil, err
			}
		}
		if err := createPinned(dir, cfg.Routing, own, cfg.MaxConns); err != nil {
			return nil, err
		}
	}
	att, err := openPinned(dir)
	if err == nil {
		if err = att.apply(cfg, fresh, targets); err != nil {
			att.Close()
		}
	}
	if err != nil {
		if fresh {
			if derr := detachLocked(dir); derr != nil {
				err = fmt.Errorf("%w (undoing the attachment also failed: %s)", err, oneLine(derr))
			}
		}
		return nil, err
	}
	return att, nil
}

// target is an interface Attach attaches the classifier to.
type target struct {
	name       string
	ifindex    int
	returnOnly bool
}

// apply brings an open attachment to cfg. On error, what it changed in an
// attachment that existed before is undone (a fresh one is detached whole by
// the caller), except the policy maps, written last, whose updates do not fail.
func (a *Attachment) apply(cfg Config, fresh bool, targets []target) (err error) {
	if !fresh {
		old, err := a.Config()
		if err != nil {
			return err
		}
		if old.Mark != cfg.Routing.Mark || int(old.RouteTable) != cfg.Routing.Table || int(old.RulePriority) != cfg.Routing.Priority {
			return fmt.Errorf("already attached with fwmark %#x, table %d, rule priority %d: detach first to change them",
				old.Mark, old.RouteTable, old.RulePriority)
		}
		capacity, err := a.ConnCapacity()
		if err != nil {
			return err
		}
		if capacity < cfg.MaxConns {
			return fmt.Errorf("already attached with maps for %d connections, fewer than the %d asked: detach first to change it", capacity, cfg.MaxConns)
		}
	}
	var undo []func()
	defer func() {
		if err != nil && !fresh {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	undoRouting, err := cfg.Routing.Install()
	if err != nil {
		return err
	}
	undo = append(undo, func() { _ = undoRouting() })
	if !fresh {
		a.pruneGoneIfaces()
	}

	prog, err := ebpf.LoadPinnedProgram(filepath.Join(a.Dir, pinClassify), nil)
	if err != nil {
		return fmt.Errorf("load pinned classifier: %w", err)
	}
	defer prog.Close()
	for _, tg := range targets {
		var state classifyIfaceState
		if a.maps.PepsalIfaces.Lookup(uint32(tg.ifindex), &state) == nil {
			if state.ReturnOnly == 1 && !tg.returnOnly { // promote to a full interception
				old := state
				state.ReturnOnly = 0
				if err := a.maps.PepsalIfaces.Put(uint32(tg.ifindex), state); err != nil {
					return fmt.Errorf("record interface %s: %w", tg.name, err)
				}
				idx := uint32(tg.ifindex)
				undo = append(undo, func() { _ = a.maps.PepsalIfaces.Put(idx, old) })
			}
			continue // already attached here
		}
		state, err := attachTC(a.Dir, prog, tg.ifindex, cfg.TCMode)
		if err != nil {
			return fmt.Errorf("attach classifier to %s: %w", tg.name, err)
		}
		if tg.returnOnly {
			state.ReturnOnly = 1
		}
		if err := a.maps.PepsalIfaces.Put(uint32(tg.ifindex), state); err != nil {
			_ = detachTC(a.Dir, tg.ifindex, state)
			return fmt.Errorf("record interface %s: %w", tg.name, err)
		}
		idx := tg.ifindex
		undo = append(undo, func() { _ = a.detachIface(idx) })
	}
	if err := a.setPolicy(cfg); err != nil {
		return err
	}
	if fresh {
		return nil // createPinned recorded the owner
	}
	return a.updateOwner(cfg.Daemon)
}

// updateOwner records who removes an attachment that existed before: `pepsal
// attach` makes it persistent; a daemon adopts it when the daemon that made it
// is dead and nobody serves it, and otherwise leaves it to its owner.
func (a *Attachment) updateOwner(daemon bool) error {
	if !daemon {
		if !exists(filepath.Join(a.Dir, pinOwner)) {
			return nil
		}
		return writeOwner(a.Dir, owner{})
	}
	cur, err := readOwner(a.Dir)
	if err != nil {
		return err
	}
	if cur.PID == 0 || cur.alive() || a.ListenerCookie(ListenerV4) != 0 || a.ListenerCookie(ListenerV6) != 0 {
		return nil
	}
	me, err := self()
	if err != nil {
		return err
	}
	if err := writeOwner(a.Dir, me); err != nil {
		return err
	}
	slog.Info("adopted the attachment of a dead daemon", "dir", a.Dir, "dead_pid", cur.PID)
	return nil
}

// pruneGoneIfaces forgets interfaces that no longer exist: their tc
// attachment went with them, only the record and a pin are left.
func (a *Attachment) pruneGoneIfaces() {
	for _, ifc := range a.recordedIfaces() {
		if _, err := netlink.LinkByIndex(ifc); err != nil {
			_ = a.detachIface(ifc)
		}
	}
}

func (a *Attachment) recordedIfaces() []int {
	var idx uint32
	var st classifyIfaceState
	var all []int
	iter := a.maps.PepsalIfaces.Iterate()
	for iter.Next(&idx, &st) {
		all = append(all, int(idx))
	}
	return all
}

// oneLine joins a multi-line (errors.Join) message into one line.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// createPinned loads the programs and maps, attaches sk_lookup to the
// namespace and pins it all, first in a temporary directory that is renamed
// into place at the end, so a half-made attachment is never visible.
func createPinned(dir string, routing Routing, own owner, conns int) (err error) {
	tmp := fmt.Sprintf("%s_tmp_%d", dir, os.Getpid()) // bpffs refuses names with dots
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp) // closing the last reference detaches the links
		}
	}()

	classifySpec, err := loadClassify()
	if err != nil {
		return err
	}
	sizeClassifyMaps(classifySpec, conns)
	classify, err := ebpf.NewCollection(classifySpec)
	if err != nil {
		return fmt.Errorf("load classifier: %w", verifierDetail(err))
	}
	defer classify.Close()
	for name, m := range classify.Maps {
		if err := m.Pin(filepath.Join(tmp, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if err := classify.Programs[pinClassify].Pin(filepath.Join(tmp, pinClassify)); err != nil {
		return fmt.Errorf("pin classifier: %w", err)
	}
	// The namespace is recorded before the pins become visible, so that pins
	// found under a reused inode number can always be told apart; the routing
	// too, so that undoing a failed attach removes it.
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	earlyDemux, err := readSysctlInt(sysctlEarlyDemux)
	if err != nil {
		return err
	}
	twReuse, err := readSysctlInt(sysctlTWReuse)
	if err != nil {
		return err
	}
	initial := classifyConfig{
		NetnsCookie:       cookie,
		Mark:              routing.Mark,
		RouteTable:        uint32(routing.Table),
		RulePriority:      uint32(routing.Priority),
		EarlyDemuxRestore: uint32(earlyDemux) + 1,
		TwReuseRestore:    uint32(twReuse) + 1,
	}
	if err := classify.Maps[pinConfig].Put(uint32(0), initial); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	ownerMap, err := newOwnerMap()
	if err != nil {
		return err
	}
	defer ownerMap.Close()
	if err := ownerMap.Put(uint32(0), own); err != nil {
		return fmt.Errorf("record owner: %w", err)
	}
	if err := ownerMap.Pin(filepath.Join(tmp, pinOwner)); err != nil {
		return fmt.Errorf("pin %s: %w", pinOwner, err)
	}
	if err := pinLayoutVersion(tmp); err != nil {
		return err
	}

	steerSpec, err := loadSteer()
	if err != nil {
		return err
	}
	steer, err := loadSharing(tmp, steerSpec, classify.Maps, pinSteer)
	if err != nil {
		return err
	}
	defer steer.Close()
	steerProg := steer.Programs[pinSteer]

	connMaps, err := createConnMaps(tmp, conns, classify.Maps)
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range connMaps {
			m.Close()
		}
	}()
	shared := map[string]*ebpf.Map{}
	for _, maps := range []map[string]*ebpf.Map{classify.Maps, connMaps} {
		for name, m := range maps {
			shared[name] = m
		}
	}
	if err := attachRelay(tmp, shared); err != nil {
		return err
	}
	if err := attachTune(tmp, shared); err != nil {
		return err
	}

	netns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer netns.Close()
	nsLink, err := link.AttachNetNs(int(netns.Fd()), steerProg)
	if err != nil {
		return fmt.Errorf("attach sk_lookup to network namespace: %w", err)
	}
	defer nsLink.Close()
	if err := nsLink.Pin(filepath.Join(tmp, pinSteerLink)); err != nil {
		return fmt.Errorf("pin sk_lookup link: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move pins into %s: %w", dir, err)
	}
	// TCP early demux hands a packet whose tuple matches a local socket,
	// TIME_WAIT included, to that socket before routing, and ip_forward then
	// drops it: a new flow reusing the tuple of a split connection that just
	// closed would be dropped for up to 60 s instead of forwarded (after a
	// crash, or on a bypassed SYN). Off while attached, restored at detach.
	if err := writeSysctl(sysctlEarlyDemux, 0); err != nil {
		return err
	}
	// pepsal's upstream sockets usually close first, so their TIME_WAIT sits
	// here, one per connection for 60 s: to one server address and port the
	// ephemeral ports then run out at ~28,000 connections a minute (connect
	// fails with EADDRNOTAVAIL, the client is reset). tw_reuse=1 lets a new
	// outgoing connection take a TIME_WAIT tuple once it is 1 s old (TCP
	// timestamps keep old segments out). Restored at detach.
	if err := writeSysctl(sysctlTWReuse, 1); err != nil {
		return err
	}
	return nil
}

const (
	sysctlEarlyDemux = "net/ipv4/tcp_early_demux" // this namespace's, for IPv4 and IPv6
	sysctlFastOpen   = "net/ipv4/tcp_fastopen"
	sysctlTWReuse    = "net/ipv4/tcp_tw_reuse" // this namespace's, for IPv4 and IPv6
)

func readSysctlInt(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return v, nil
}

func writeSysctl(name string, v int) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("set %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return nil
}

// restoreSysctl puts back a value recorded plus one (0: never changed).
func restoreSysctl(name string, plusOne uint32) error {
	if plusOne == 0 {
		return nil
	}
	return writeSysctl(name, int(plusOne)-1)
}

func verifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%+v", ve)
	}
	return err
}

// loadSharing loads spec with the maps it shares with the classifier
// replaced by the classifier's, and pins its own maps and program pinName.
func loadSharing(dir string, spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, pinName string) (*ebpf.Collection, error) {
	repl := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if m, ok := shared[name]; ok {
			repl[name] = m
			ms.MaxEntries = m.MaxEntries() // per-connection maps are sized at attach
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", pinName, verifierDetail(err))
	}
	for name, m := range coll.Maps {
		if _, isShared := repl[name]; isShared {
			continue
		}
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			coll.Close()
			return nil, fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if err := coll.Programs[pinName].Pin(filepath.Join(dir, pinName)); err != nil {
		coll.Close()
		return nil, fmt.Errorf("pin %s: %w", pinName, err)
	}
	return coll, nil
}

// attachRelay loads the sk_skb relay verdict, attaches it to pepsal_relay
// (every socket inserted there gets it) and pins both.
func attachRelay(dir string, shared map[string]*ebpf.Map) error {
	spec, err := loadRelay()
	if err != nil {
		return err
	}
	coll, err := loadSharing(dir, spec, shared, pinRelay)
	if err != nil {
		return err
	}
	defer coll.Close()
	// A program attached to a map stays as long as the map (pinned) lives.
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  coll.Maps["pepsal_relay"].FD(),
		Program: coll.Programs[pinRelay],
		Attach:  ebpf.AttachSkSKBVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach relay verdict to pepsal_relay: %w", err)
	}
	return nil
}

func openPinned(dir string) (*Attachment, error) {
	if err := checkLayout(dir); err != nil {
		return nil, err
	}
	att := &Attachment{Dir: dir}
	for _, maps := range []any{&att.maps, &att.relay} {
		if err := loadPinnedMaps(dir, maps); err != nil {
			att.Close()
			return nil, err
		}
	}
	return att, nil
}

// loadPinnedMaps fills a bpf2go maps struct from the pins named by its tags.
func loadPinnedMaps(dir string, maps any) error {
	v := reflect.ValueOf(maps).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name := t.Field(i).Tag.Get("ebpf")
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return ErrNotAttached
			}
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		v.Field(i).Set(reflect.ValueOf(m))
	}
	return nil
}

// Open opens the existing attachment of this network namespace. Pins of a
// dead namespace found in its pin directory give a *ForeignPinsError, which
// is also ErrNotAttached.
func Open() (*Attachment, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil, ErrNotAttached
	}
	dir, err := PinDir()
	if err != nil {
		return nil, err
	}
	if err := foreignPins(dir); err != nil {
		return nil, err
	}
	return openPinned(dir)
}

func (a *Attachment) setPolicy(cfg Config) error {
	var c classifyConfig
	if err := a.maps.PepsalConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	c.NetnsCookie = cookie
	c.Mark = cfg.Routing.Mark
	c.RouteTable = uint32(cfg.Routing.Table)
	c.RulePriority = uint32(cfg.Routing.Priority)
	// Fill the port set before narrowing from "all ports", so no wanted SYN is missed.
	wanted := map[uint16]bool{}
	for _, p := range cfg.Ports {
		wanted[p] = true
		if err := a.maps.PepsalPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("set port %d: %w", p, err)
		}
	}
	if len(cfg.Ports) == 0 {
		c.AllPorts = 1
	}
	if err := a.maps.PepsalConfig.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	var port uint16
	var one uint8
	var stale []uint16
	iter := a.maps.PepsalPorts.Iterate()
	for iter.Next(&port, &one) {
		if !wanted[port] {
			stale = append(stale, port)
		}
	}
	for _, p := range stale {
		_ = a.maps.PepsalPorts.Delete(p)
	}

	keep := map[classifyExcludeKey]bool{}
	for _, pfx := range cfg.Exclude {
		k := ExcludeKey(pfx)
		keep[k] = true
		if err := a.maps.PepsalExclude.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("set exclude %s: %w", pfx, err)
		}
	}
	var k classifyExcludeKey
	var staleKeys []classifyExcludeKey
	iter = a.maps.PepsalExclude.Iterate()
	for iter.Next(&k, &one) {
		if !keep[k] {
			staleKeys = append(staleKeys, k)
		}
	}
	for _, k := range staleKeys {
		_ = a.maps.PepsalExclude.Delete(k)
	}
	return nil
}

// ExcludeKey is the LPM key of a prefix: IPv4 is stored v4-mapped.
func ExcludeKey(p netip.Prefix) classifyExcludeKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return classifyExcludeKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

// Config returns the stored configuration.
func (a *Attachment) Config() (classifyConfig, error) {
	var c classifyConfig
	if err := a.maps.PepsalConfig.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	return c, nil
}

// RecordFastOpenRestore remembers the net.ipv4.tcp_fastopen value to put
// back at detach (also after a killed daemon). Only the first record counts.
func (a *Attachment) RecordFastOpenRestore(old int) error {
	c, err := a.Config()
	if err != nil {
		return err
	}
	if c.FastopenRestore != 0 {
		return nil
	}
	c.FastopenRestore = uint32(old) + 1
	return a.maps.PepsalConfig.Put(uint32(0), c)
}

// Routing returns the policy routing this attachment installed.
func (a *Attachment) Routing() (Routing, error) {
	c, err := a.Config()
	if err != nil {
		return Routing{}, err
	}
	return Routing{Mark: c.Mark, Table: int(c.RouteTable), Priority: int(c.RulePriority)}, nil
}

// RegisterListener puts a listening socket into pepsal_listen; from then on
// the classifier diverts SYNs of that family to it.
func (a *Attachment) RegisterListener(slot uint32, fd int) error {
	if err := a.maps.PepsalListen.Update(slot, uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register listener in pepsal_listen: %w", err)
	}
	return nil
}

// ListenerCookie is the socket cookie of the registered listener, 0 if none.
func (a *Attachment) ListenerCookie(slot uint32) uint64 {
	var cookie uint64
	if err := a.maps.PepsalListen.Lookup(slot, &cookie); err != nil {
		return 0
	}
	return cookie
}

// Counter is one named decision counter.
type Counter struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Counters sums the per-CPU counters, named as in bpf/pepsal.h.
func (a *Attachment) Counters() ([]Counter, error) {
	var perCPU []classifyCounters
	if err := a.maps.PepsalCounters.Lookup(uint32(0), &perCPU); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	var out []Counter
	t := reflect.TypeOf(classifyCounters{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		var sum uint64
		for _, c := range perCPU {
			sum += reflect.ValueOf(c).Field(i).Uint()
		}
		out = append(out, Counter{Name: snake(f.Name), Value: sum})
	}
	return out, nil
}

func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Iface is an interface the classifier is attached to.
type Iface struct {
	Index      int    `json:"ifindex"`
	Name       string `json:"name"`
	TCMode     string `json:"tc_mode"`
	ReturnOnly bool   `json:"return_only"`
}

// Ifaces lists the interfaces the classifier is attached to.
func (a *Attachment) Ifaces() ([]Iface, error) {
	var out []Iface
	var idx uint32
	var st classifyIfaceState
	iter := a.maps.PepsalIfaces.Iterate()
	for iter.Next(&idx, &st) {
		ifc := Iface{Index: int(idx), Name: "(gone)", TCMode: "tcx", ReturnOnly: st.ReturnOnly == 1}
		if st.TcMode == tcModeClsact {
			ifc.TCMode = "clsact"
		}
		if n, err := net.InterfaceByIndex(int(idx)); err == nil {
			ifc.Name = n.Name
		}
		out = append(out, ifc)
	}
	return out, iter.Err()
}

// ProgramIDs returns the kernel ids of the pinned programs, by name.
func (a *Attachment) ProgramIDs() map[string]uint32 {
	ids := map[string]uint32{}
	for _, name := range []string{pinClassify, pinSteer, pinRelay, pinTune} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(a.Dir, name), nil)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids[name] = uint32(id)
			}
		}
		p.Close()
	}
	return ids
}

func (a *Attachment) detachIface(ifindex int) error {
	var st classifyIfaceState
	_ = a.maps.PepsalIfaces.Lookup(uint32(ifindex), &st)
	err := detachTC(a.Dir, ifindex, st)
	_ = a.maps.PepsalIfaces.Delete(uint32(ifindex))
	return err
}

// Detach removes every trace of pepsal from this network namespace: tc
// programs and the qdiscs it created, sk_lookup, rules, routes and pins. It
// works after a killed daemon and is a no-op when nothing is attached.
func Detach() error {
	var fs unix.Statfs_t
	if err := unix.Statfs(BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir, err := PinDir()
	if err != nil {
		return err
	}
	var foreign *ForeignPinsError
	if err := foreignPins(dir); errors.As(err, &foreign) {
		return removeForeignPins(dir) // nothing of it is in this namespace
	} else if err != nil {
		return err
	}
	return detachLocked(dir)
}

// DetachOwned detaches like Detach if this process owns the attachment (it
// created it, or adopted a dead daemon's, with Config.Daemon), and tells
// whether it did. An attachment `pepsal attach` made or claimed since stays.
func DetachOwned() (bool, error) {
	unlock, err := lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	dir, err := PinDir()
	if err != nil {
		return false, err
	}
	var foreign *ForeignPinsError
	if err := foreignPins(dir); errors.As(err, &foreign) {
		return false, nil // not this namespace's, so not ours
	} else if err != nil {
		return false, err
	}
	cur, err := readOwner(dir)
	if err != nil {
		return false, err
	}
	me, err := self()
	if err != nil {
		return false, err
	}
	if cur != me {
		return false, nil
	}
	return true, detachLocked(dir)
}

// OwnedByMe says whether this process removes the attachment when it stops.
func (a *Attachment) OwnedByMe() bool {
	cur, err := readOwner(a.Dir)
	if err != nil || cur.PID == 0 {
		return false
	}
	me, err := self()
	return err == nil && cur == me
}

// Owner is the pid of the daemon that removes the attachment when it stops
// and whether it still runs; 0 for a persistent attachment (`pepsal attach`).
func (a *Attachment) Owner() (pid int, alive bool) {
	cur, err := readOwner(a.Dir)
	if err != nil {
		return 0, false
	}
	return int(cur.PID), cur.alive()
}

// Problems lists why the attachment does not do what it records, in this
// namespace: an sk_lookup link that is not on this namespace, interfaces that
// are gone or lost their classifier, missing policy routing.
func (a *Attachment) Problems() []string {
	var out []string
	ino, err := NetnsID()
	if err != nil {
		return []string{err.Error()}
	}
	switch linkIno, err := steerLinkNetns(a.Dir); {
	case err != nil:
		out = append(out, err.Error())
	case linkIno == 0:
		out = append(out, "the sk_lookup link is missing or on a dead network namespace: no diverted connection reaches the listener")
	case linkIno != ino:
		out = append(out, fmt.Sprintf("the sk_lookup link is on network namespace inode %d, not this one (%d)", linkIno, ino))
	}
	var idx uint32
	var st classifyIfaceState
	iter := a.maps.PepsalIfaces.Iterate()
	for iter.Next(&idx, &st) {
		if _, err := netlink.LinkByIndex(int(idx)); err != nil {
			out = append(out, fmt.Sprintf("interface ifindex %d no longer exists", idx))
			continue
		}
		if err := classifierAttached(a.Dir, int(idx), st); err != nil {
			out = append(out, err.Error())
		}
	}
	if err := iter.Err(); err != nil {
		out = append(out, fmt.Sprintf("read pepsal_ifaces: %v", err))
	}
	if r, err := a.Routing(); err != nil {
		out = append(out, err.Error())
	} else if rules, routes, err := r.Present(); err != nil {
		out = append(out, err.Error())
	} else if rules < len(families) || routes < len(families) {
		out = append(out, fmt.Sprintf("policy routing incomplete: %d/%d fwmark rules, %d/%d local routes", rules, len(families), routes, len(families)))
	}
	return out
}

func detachLocked(dir string) error {
	var errs []error
	routing := Routing{Mark: DefaultMark, Table: DefaultTable, Priority: DefaultRulePriority}
	var restoreFastOpen, restoreEarlyDemux, restoreTWReuse uint32
	if att, err := openPinned(dir); err == nil {
		if r, err := att.Routing(); err == nil {
			routing = r
		}
		if c, err := att.Config(); err == nil {
			restoreFastOpen, restoreEarlyDemux, restoreTWReuse = c.FastopenRestore, c.EarlyDemuxRestore, c.TwReuseRestore
		}
		for _, i := range att.recordedIfaces() {
			errs = append(errs, att.detachIface(i))
		}
		att.Close()
	} else if c, ok := rawConfig(dir); ok { // pins of another layout
		routing = Routing{Mark: c.Mark, Table: int(c.RouteTable), Priority: int(c.RulePriority)}
		restoreFastOpen, restoreEarlyDemux, restoreTWReuse = c.FastopenRestore, c.EarlyDemuxRestore, c.TwReuseRestore
	}
	// Links pinned without a record (a crash between pin and record).
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if rest, ok := strings.CutPrefix(e.Name(), tcLinkPrefix); ok {
			if i, err := strconv.Atoi(rest); err == nil {
				errs = append(errs, detachTC(dir, i, classifyIfaceState{TcMode: tcModeTCX}))
			}
		}
	}
	for _, pin := range []string{pinTuneLink, pinSteerLink} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, pin), nil)
		if err != nil {
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
		}
		l.Close()
	}
	errs = append(errs, routing.Remove())
	errs = append(errs, restoreSysctl(sysctlFastOpen, restoreFastOpen), restoreSysctl(sysctlEarlyDemux, restoreEarlyDemux),
		restoreSysctl(sysctlTWReuse, restoreTWReuse))
	errs = append(errs, removePinDir(dir))
	return errors.Join(errs...)
}
