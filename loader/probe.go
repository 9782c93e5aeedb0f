package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
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
