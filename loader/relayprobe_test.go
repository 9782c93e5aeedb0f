// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestProbeKernelRelay checks the probe against what the kernel's BTF says
// independently: with the verdict's kfunc the verdict loads and (from 6.4,
// where sockmap reports a FIN) the probe passes; without it the probe says
// that the kfunc is what is missing. Either way it leaves no descriptor.
func TestProbeKernelRelay(t *testing.T) {
	needBPF(t)
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	_, kfuncErr := kernel.AnyTypeByName("bpf_cast_to_kern_ctx")
	hasKfunc := kfuncErr == nil
	fds := openFDCount(t)

	err = ProbeKernelRelay()
	t.Logf("kfunc in BTF: %v; probe: %v", hasKfunc, err)
	var un *Unsupported
	switch {
	case err != nil && !errors.As(err, &un):
		t.Fatalf("probe failed without saying what the kernel lacks: %v", err)
	case !hasKfunc && err == nil:
		t.Fatal("the probe passed on a kernel without bpf_cast_to_kern_ctx")
	case !hasKfunc && !strings.Contains(un.Why, "bpf_cast_to_kern_ctx"):
		t.Errorf("probe on a kernel without the kfunc: %q, want it named", un.Why)
	case hasKfunc && err != nil && hasRelayFixes(running(t)):
		t.Errorf("the probe fails on a kernel that has everything the relay needs: %v", err)
	}
	if after := openFDCount(t); after != fds {
		t.Errorf("open fds %d after the probe, %d before", after, fds)
	}
}

func openFDCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func running(t *testing.T) KernelVersion {
	t.Helper()
	v, err := RunningKernel()
	if err != nil {
		t.Fatal(err)
	}
	return v
}
