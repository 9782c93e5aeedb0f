// SPDX-License-Identifier: Apache-2.0

package loader

import "github.com/cilium/ebpf/btf"

// The two records the loader pins itself (pepsal_owner, pepsal_layout) are
// created from Go, not from an object file: their types are described
// here so that `bpftool map dump` prints them by field, as it does the
// maps of the BPF objects.
var (
	btfU32 = &btf.Int{Name: "__u32", Size: 4, Encoding: btf.Unsigned}
	btfU64 = &btf.Int{Name: "__u64", Size: 8, Encoding: btf.Unsigned}

	// ownerBTF is struct owner.
	ownerBTF = &btf.Struct{Name: "owner", Size: 16, Members: []btf.Member{
		{Name: "pid", Type: btfU32, Offset: 0},
		{Name: "pad", Type: btfU32, Offset: 32},
		{Name: "start_time", Type: btfU64, Offset: 64}, // clock ticks after boot
	}}

	// layoutBTF is the recorded LayoutVersion.
	layoutBTF = &btf.Struct{Name: "layout", Size: 4, Members: []btf.Member{
		{Name: "version", Type: btfU32, Offset: 0},
	}}
)
