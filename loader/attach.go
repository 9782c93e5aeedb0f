// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Config is what an attachment intercepts.
type Config struct {
	Ifaces       []string
	ReturnIfaces []string // only return traffic of local sockets is taken here (transparent mode)
	Ports        []uint16 // empty: every port
	Exclude      []netip.Prefix
	Routing      Routing
	TCMode       string // "auto" (tcx, else clsact), "tcx" or "clsact"
	// MapConns is how many connections the per-connection maps must hold
	// (the daemon's --max-conns plus its accept queues); 0: DefaultMapConns.
	// It sizes a new attachment; an existing one must already hold it.
	MapConns int
	// Daemon: a `pepsal run` attaches. It owns an attachment it creates, or
	// one whose daemon died, and removes it when it stops (DetachOwned).
	Daemon bool
	// WaitIfaces: an interface of Ifaces or ReturnIfaces that does not
	// exist is left out, not an error (a daemon attaches it when it
	// appears: Reattach).
	WaitIfaces bool
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
	targets, err := cfg.targets()
	if err != nil {
		return nil, err
	}
	if cfg, err = cfg.withDefaults(); err != nil {
		return nil, err
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
	if err := removeDeadPins(dir); err != nil {
		return nil, err
	}
	return attachLocked(dir, cfg, targets)
}

// target is an interface Attach attaches the classifier to.
type target struct {
	name       string
	ifindex    int
	returnOnly bool
}

// targets resolves the interfaces the classifier goes on: every one of
// Ifaces, then those of ReturnIfaces that are not among them.
// With WaitIfaces, the interfaces that do not exist are left out.
func (cfg Config) targets() ([]target, error) {
	var targets []target
	var ifindexes []int
	for _, w := range cfg.Wanted() {
		idx, err := ResolveIfaces([]string{w.Name})
		if err != nil && cfg.WaitIfaces {
			continue
		}
		if err != nil {
			return nil, err
		}
		if w.ReturnOnly && slices.Contains(ifindexes, idx[0]) {
			continue
		}
		ifindexes = append(ifindexes, idx[0])
		targets = append(targets, target{w.Name, idx[0], w.ReturnOnly})
	}
	return targets, nil
}

// withDefaults fills in the routing and the map size left zero, and checks
// the size.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Routing == (Routing{}) {
		cfg.Routing = Routing{Mark: DefaultMark, Table: DefaultTable, Priority: DefaultRulePriority}
	}
	if cfg.MapConns == 0 {
		cfg.MapConns = DefaultMapConns
	}
	if cfg.MapConns < 0 || cfg.MapConns > MaxMapConns {
		return cfg, fmt.Errorf("maps for %d connections: want 1 to %d", cfg.MapConns, MaxMapConns)
	}
	return cfg, nil
}

// removeDeadPins removes the pins in dir of a dead namespace that had this
// one's inode number: they are never adopted.
func removeDeadPins(dir string) error {
	var foreign *ForeignPinsError
	err := foreignPins(dir)
	if !errors.As(err, &foreign) {
		return err
	}
	if err := removeForeignPins(dir); err != nil {
		return fmt.Errorf("remove the pins of a dead network namespace: %w", err)
	}
	slog.Info("removed the pins of a dead network namespace", "dir", dir, "why", foreign.Reason)
	return nil
}

// attachLocked creates the pins in dir if there are none, then brings
// them to cfg; on error, an attachment it created is removed whole. The
// caller holds the lock.
func attachLocked(dir string, cfg Config, targets []target) (*Attachment, error) {
	fresh := !exists(filepath.Join(dir, pinConfig))
	if fresh {
		var own owner // nobody: persistent
		if cfg.Daemon {
			var err error
			if own, err = self(); err != nil {
				return nil, err
			}
		}
		if err := createPinned(dir, cfg.Routing, own, cfg.MapConns); err != nil {
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

// apply brings an open attachment to cfg. On error, what it changed in an
// attachment that existed before is undone (a fresh one is detached whole by
// the caller), except the policy maps, written last, whose updates do not fail.
func (a *Attachment) apply(cfg Config, fresh bool, targets []target) (err error) {
	if !fresh {
		if err := a.checkFits(cfg); err != nil {
			return err
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
	if err := a.attachTargets(targets, cfg.TCMode, &undo); err != nil {
		return err
	}
	if err := a.setPolicy(cfg); err != nil {
		return err
	}
	if fresh {
		return nil // createPinned recorded the owner
	}
	return a.updateOwner(cfg.Daemon)
}

// checkFits fails unless an attachment that existed before can take cfg:
// its routing cannot change, nor its maps grow, without a detach.
func (a *Attachment) checkFits(cfg Config) error {
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
	if capacity < cfg.MapConns {
		return fmt.Errorf("already attached with maps for %d connections, fewer than the %d asked: detach first to change it", capacity, cfg.MapConns)
	}
	return nil
}

// attachTargets attaches the pinned classifier to the targets it is not on
// yet, and appends to undo how to take each change back.
func (a *Attachment) attachTargets(targets []target, tcMode string, undo *[]func()) error {
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(a.Dir, pinClassify), nil)
	if err != nil {
		return fmt.Errorf("load pinned classifier: %w", err)
	}
	defer prog.Close()
	for _, tg := range targets {
		u, err := a.attachTarget(prog, tg, tcMode)
		if err != nil {
			return err
		}
		if u != nil {
			*undo = append(*undo, u)
		}
	}
	return nil
}

// attachTarget attaches prog to one interface, or promotes a return-only
// one to full interception; it returns how to undo that (nil: nothing done).
func (a *Attachment) attachTarget(prog *ebpf.Program, tg target, tcMode string) (undo func(), err error) {
	var state classifyIfaceState
	if a.maps.PepsalIfaces.Lookup(uint32(tg.ifindex), &state) == nil {
		if state.ReturnOnly == 1 && !tg.returnOnly {
			return a.promote(tg, state)
		}
		return nil, nil // already attached here
	}
	state, err = attachTC(a.Dir, prog, tg.ifindex, tcMode)
	if err != nil {
		return nil, fmt.Errorf("attach classifier to %s: %w", tg.name, err)
	}
	if tg.returnOnly {
		state.ReturnOnly = 1
	}
	if err := a.maps.PepsalIfaces.Put(uint32(tg.ifindex), state); err != nil {
		_ = detachTC(a.Dir, tg.ifindex, state)
		return nil, fmt.Errorf("record interface %s: %w", tg.name, err)
	}
	idx := tg.ifindex
	return func() { _ = a.detachIface(idx) }, nil
}

// promote makes a return-only interface, state, one where new connections
// are split too: the classifier is on it already.
func (a *Attachment) promote(tg target, state classifyIfaceState) (undo func(), err error) {
	old := state
	state.ReturnOnly = 0
	if err := a.maps.PepsalIfaces.Put(uint32(tg.ifindex), state); err != nil {
		return nil, fmt.Errorf("record interface %s: %w", tg.name, err)
	}
	idx := uint32(tg.ifindex)
	return func() { _ = a.maps.PepsalIfaces.Put(idx, old) }, nil
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
