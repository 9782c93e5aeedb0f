// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// createPinned loads the programs and maps, attaches sk_lookup to the
// namespace and pins it all, first in a temporary directory that is renamed
// into place at the end, so a half-made attachment is never visible.
func createPinned(dir string, routing Routing, own owner, conns int) (err error) {
	tmp, err := makeTmpPinDir(dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp) // closing the last reference detaches the links
		}
	}()

	classify, err := loadObject(tmp, loadClassify, conns, pinClassify)
	if err != nil {
		return err
	}
	defer classify.Close()
	if err := recordNamespace(classify.Maps[pinConfig], routing); err != nil {
		return err
	}
	if err := pinOwnerOf(tmp, own); err != nil {
		return err
	}
	if err := pinLayoutVersion(tmp); err != nil {
		return err
	}

	steer, err := loadObject(tmp, loadSteer, conns, pinSteer)
	if err != nil {
		return err
	}
	defer steer.Close()
	if err := createRelayMaps(tmp, conns); err != nil {
		return err
	}
	if err := attachTune(tmp, conns); err != nil {
		return err
	}
	if err := attachSteer(tmp, steer.Programs[pinSteer]); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move pins into %s: %w", dir, err)
	}
	return setSplitSysctls()
}

// makeTmpPinDir makes the empty directory where createPinned pins what it
// creates for dir.
func makeTmpPinDir(dir string) (string, error) {
	tmp := fmt.Sprintf("%s%s%d", dir, tmpPinSuffix, os.Getpid())
	// A leftover of a crashed attach with this pid: loading by name would
	// share its maps.
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("remove %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", tmp, err)
	}
	return tmp, nil
}

// recordNamespace writes the classifier's initial config. The namespace is
// recorded before the pins become visible, so that pins found under a
// reused inode number can always be told apart; the routing too, so that
// undoing a failed attach removes it; and the sysctls that setSplitSysctls
// changes, so that detach restores them.
func recordNamespace(config *ebpf.Map, routing Routing) error {
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
	if err := config.Put(uint32(0), initial); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// pinOwnerOf records who removes the attachment (nobody: own is zero) and
// pins the record in tmp.
func pinOwnerOf(tmp string, own owner) error {
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
	return nil
}

// attachSteer attaches the sk_lookup program to this thread's network
// namespace and pins the link in tmp: the pin keeps it attached.
func attachSteer(tmp string, prog *ebpf.Program) error {
	netns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer netns.Close()
	nsLink, err := link.AttachNetNs(int(netns.Fd()), prog)
	if err != nil {
		return fmt.Errorf("attach sk_lookup to network namespace: %w", err)
	}
	defer nsLink.Close()
	if err := nsLink.Pin(filepath.Join(tmp, pinSteerLink)); err != nil {
		return fmt.Errorf("pin sk_lookup link: %w", err)
	}
	return nil
}

// setSplitSysctls changes the two TCP sysctls that split connections trip
// on, while attached; detach restores what recordNamespace recorded.
func setSplitSysctls() error {
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
	return writeSysctl(sysctlTWReuse, 1)
}

// verifierDetail puts the verifier's log in a load error.
func verifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%+v", ve)
	}
	return err
}

// loadObject loads one BPF object with its maps pinned by name in dir
// (LIBBPF_PIN_BY_NAME in bpf/): a map that an object loaded before pinned
// there is shared, not created again, which is how the classifier, sk_lookup,
// the relay verdict and sock_ops see the same maps. Per-connection maps are
// sized for conns in every object, as sharing wants them alike. It pins the
// program progName too (cilium/ebpf pins only maps).
func loadObject(dir string, load func() (*ebpf.CollectionSpec, error), conns int, progName string) (*ebpf.Collection, error) {
	spec, err := load()
	if err != nil {
		return nil, err
	}
	sizeConnMaps(spec, conns)
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", progName, verifierDetail(err))
	}
	if err := coll.Programs[progName].Pin(filepath.Join(dir, progName)); err != nil {
		coll.Close()
		return nil, fmt.Errorf("pin %s: %w", progName, err)
	}
	return coll, nil
}
