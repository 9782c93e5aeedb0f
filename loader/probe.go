// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
)

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

// ProbeTCX tells whether the kernel has tcx links (Linux 6.6), which the
// classifier prefers to a clsact filter: an *Unsupported error if not.
func ProbeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("probe tcx: %w", err)
	}
	defer prog.Close()
	// No interface has this index: a kernel with tcx refuses with ENODEV.
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return &Unsupported{Feature: "tcx", Why: "the kernel has no tcx links (Linux 6.6)"}
	}
	return nil
}
