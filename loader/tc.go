// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TC attachment modes, as stored in pepsal_ifaces.
const (
	tcModeTCX    = 1
	tcModeClsact = 2
)

// clsactPriority is the filter priority (and handle) pepsal uses on clsact, so
// that detach removes its own filter and nothing else.
const clsactPriority = 0x5e9

func tcLinkPin(dir string, ifindex int) string {
	return filepath.Join(dir, tcLinkPrefix+strconv.Itoa(ifindex))
}

// attachTC attaches the classifier to ingress of ifindex: a pinned tcx link
// when the kernel has tcx (6.6+), a clsact bpf filter otherwise.
func attachTC(dir string, prog *ebpf.Program, ifindex int, mode string) (classifyIfaceState, error) {
	if mode != "clsact" {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err == nil {
			defer l.Close()
			if err := l.Pin(tcLinkPin(dir, ifindex)); err != nil {
				return classifyIfaceState{}, fmt.Errorf("pin tcx link: %w", err)
			}
			return classifyIfaceState{TcMode: tcModeTCX}, nil
		}
		if mode == "tcx" || !errors.Is(err, ebpf.ErrNotSupported) {
			return classifyIfaceState{}, fmt.Errorf("attach tcx: %w", err)
		}
	}
	return attachClsact(prog, ifindex)
}

func attachClsact(prog *ebpf.Program, ifindex int) (classifyIfaceState, error) {
	state := classifyIfaceState{TcMode: tcModeClsact}
	lnk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return state, err
	}
	qdiscs, err := netlink.QdiscList(lnk)
	if err != nil {
		return state, fmt.Errorf("list qdiscs: %w", err)
	}
	haveClsact := false
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			haveClsact = true
		}
	}
	if !haveClsact {
		q := &netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}
		if err := netlink.QdiscAdd(q); err != nil {
			return state, fmt.Errorf("add clsact qdisc: %w", err)
		}
		state.CreatedClsact = 1
	}
	filter := clsactFilter(ifindex)
	filter.Fd = prog.FD()
	if err := netlink.FilterReplace(filter); err != nil {
		if state.CreatedClsact == 1 {
			_ = deleteClsact(ifindex)
		}
		return state, fmt.Errorf("add clsact bpf filter: %w", err)
	}
	return state, nil
}

func clsactFilter(ifindex int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    1,
			Priority:  clsactPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Name:         "pepsal_classify",
		DirectAction: true,
	}
}

func deleteClsact(ifindex int) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc: %w", err)
	}
	return nil
}

// detachTC undoes attachTC. An interface that has disappeared took its
// attachment with it, which is fine.
func detachTC(dir string, ifindex int, state classifyIfaceState) error {
	var errs []error
	pin := tcLinkPin(dir, ifindex)
	if exists(pin) {
		l, err := link.LoadPinnedLink(pin, nil)
		if err == nil {
			// Detach (not just unpin) so the program goes even if something holds the link.
			if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detach tcx link on ifindex %d: %w", ifindex, err))
			}
			l.Close()
		}
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if state.TcMode == tcModeClsact {
		if _, err := netlink.LinkByIndex(ifindex); err == nil {
			if err := netlink.FilterDel(clsactFilter(ifindex)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete clsact filter on ifindex %d: %w", ifindex, err))
			}
			if state.CreatedClsact == 1 {
				errs = append(errs, deleteClsact(ifindex))
			}
		}
	}
	return errors.Join(errs...)
}

// classifierAttached checks that the classifier recorded on ifindex is really
// on its ingress, as a live tcx link or as pepsal's clsact filter.
func classifierAttached(dir string, ifindex int, state classifyIfaceState) error {
	if state.TcMode == tcModeClsact {
		lnk, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return fmt.Errorf("interface ifindex %d: %w", ifindex, err)
		}
		filters, err := netlink.FilterList(lnk, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return fmt.Errorf("list ingress filters of %s: %w", lnk.Attrs().Name, err)
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Priority == clsactPriority {
				return nil
			}
		}
		return fmt.Errorf("the classifier's clsact filter on %s is gone", lnk.Attrs().Name)
	}
	l, err := link.LoadPinnedLink(tcLinkPin(dir, ifindex), nil)
	if err != nil {
		return fmt.Errorf("the classifier's tcx link on ifindex %d is missing: %w", ifindex, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("read tcx link info on ifindex %d: %w", ifindex, err)
	}
	if tcx := info.TCX(); tcx == nil || int(tcx.Ifindex) != ifindex {
		return fmt.Errorf("the classifier's tcx link on ifindex %d is detached", ifindex)
	}
	return nil
}
