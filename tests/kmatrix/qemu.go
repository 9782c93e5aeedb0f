// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Accel is how qemu runs a guest here: KVM where /dev/kvm can run a stock
// kernel, TCG (emulation, about 10x slower) otherwise. A PVM /dev/kvm
// (kvm_pvm) runs only guests built for it: stock kernels die in it.
func Accel() string {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}

// VM boots one prepared kernel with the host's root shared read-only and
// Out shared read-write at its own path.
type VM struct {
	Kernel *Prepared
	Out    string
	Accel  string // kvm or tcg
	CPUs   int
	Memory string // qemu -m, e.g. 4G
}

// Args is qemu's command line.
func (vm VM) Args() ([]string, error) {
	for _, p := range []string{vm.Out, vm.Kernel.Vmlinuz, vm.Kernel.Initrd} {
		if strings.ContainsAny(p, ", \t\n") {
			return nil, fmt.Errorf("path %q: qemu's option syntax cannot take commas or spaces", p)
		}
	}
	var accel []string
	switch vm.Accel {
	case "kvm":
		accel = []string{"-enable-kvm", "-cpu", "host"}
	case "tcg":
		accel = []string{"-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"}
	default:
		return nil, fmt.Errorf("accel %q: want kvm or tcg", vm.Accel)
	}
	args := append(accel,
		"-smp", strconv.Itoa(vm.CPUs), "-m", vm.Memory,
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", vm.Kernel.Vmlinuz, "-initrd", vm.Kernel.Initrd,
		"-append", "console=ttyS0 quiet panic=-1 kmatrix.out="+vm.Out,
		"-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=root,mount_tag=root",
		"-fsdev", "local,id=out,path="+vm.Out+",security_model=none,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=out,mount_tag=out",
		"-device", "virtio-rng-pci",
	)
	return args, nil
}

// Boot runs the VM until the guest powers off (the runner's end) or ctx
// ends; the console goes to Out/console.log.
func (vm VM) Boot(ctx context.Context) error {
	args, err := vm.Args()
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return errors.New("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	}
	console, err := os.Create(filepath.Join(vm.Out, "console.log"))
	if err != nil {
		return err
	}
	defer console.Close()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = console, console
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("VM still running at its deadline: %w", ctx.Err())
		}
		return fmt.Errorf("qemu: %w (console: %s)", err, console.Name())
	}
	return nil
}

// nofileLimit is the guest's RLIMIT_NOFILE: the host's hard limit, so that
// tests that size themselves from it see the same in the VM.
func nofileLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Max > 1<<20 {
		return 1 << 20
	}
	return rl.Max
}
