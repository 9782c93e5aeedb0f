// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseVerbose(t *testing.T) {
	out := `=== RUN   TestA
--- PASS: TestA (0.50s)
=== RUN   TestB
=== RUN   TestB/one
    b_test.go:10: some log
=== RUN   TestB/two
    b_test.go:20: kernel relay off: no kfunc
--- FAIL: TestB (3.00s)
    --- PASS: TestB/one (1.00s)
    --- SKIP: TestB/two (0.10s)
        b_test.go:20: kernel relay off: no kfunc
=== RUN   TestC
    c_test.go:4: kernel relay off: expecting splice
    c_test.go:5: want 3, got 4
    helpers_test.go:122: pepsal output (ns):
--- FAIL: TestC (0.01s)
PASS
`
	got, err := ParseVerbose(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []Result{
		{Test: "TestA", Outcome: Pass, Seconds: 0.5},
		{Test: "TestB", Outcome: Fail, Seconds: 3},
		{Test: "TestB/one", Outcome: Pass, Seconds: 1},
		{Test: "TestB/two", Outcome: Skip, Seconds: 0.1, Why: "kernel relay off: no kfunc"},
		{Test: "TestC", Outcome: Fail, Seconds: 0.01, Why: "kernel relay off: expecting splice | want 3, got 4"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
}

func TestSettle(t *testing.T) {
	reported := []Result{{Test: "TestA", Outcome: Pass}}
	// A timeout: the test that did not report failed.
	got := Settle(slices.Clone(reported), []string{"TestA", "TestB"}, 2, "timed out")
	if len(got) != 2 || got[1] != (Result{Test: "TestB", Outcome: Fail, Why: "timed out"}) {
		t.Errorf("timeout: %+v", got)
	}
	// A failure was reported: the unreported ones did not run.
	failed := []Result{{Test: "TestA", Outcome: Fail}}
	got = Settle(slices.Clone(failed), []string{"TestA", "TestB"}, 1, "exit 1")
	if len(got) != 2 || got[1].Outcome != NotRun {
		t.Errorf("after a failure: %+v", got)
	}
	// A clean exit adds nothing.
	if got := Settle(slices.Clone(reported), []string{"TestA"}, 0, ""); len(got) != 1 {
		t.Errorf("clean exit: %+v", got)
	}
}

func TestTable(t *testing.T) {
	runs := []*Run{
		{Kernel: "6.1", Release: "6.1.0-57-amd64", Package: "p1", Accel: "tcg", Duration: 90 * time.Second, Results: []Result{
			{Test: "TestA", Outcome: Pass}, {Test: "TestA/sub", Outcome: Pass},
			{Test: "TestK", Outcome: Skip, Why: "kernel relay off: no kfunc"},
			{Test: "TestM", Outcome: Skip, Why: "a measurement"},
		}},
		{Kernel: "6.18", Release: "6.18.15+deb13-amd64", Package: "p2", Accel: "tcg", Duration: time.Minute, Results: []Result{
			{Test: "TestA", Outcome: Pass}, {Test: "TestA/sub", Outcome: Fail, Why: "bytes lost"},
			{Test: "TestK", Outcome: Pass},
			{Test: "TestM", Outcome: Skip, Why: "a measurement"},
		}},
	}
	var b bytes.Buffer
	Table(&b, runs)
	want := `test       6.1     6.18  
TestA      PASS    PASS  
TestA/sub  PASS    FAIL  
TestK      SKIP    PASS  
TestM      SKIP    SKIP  

6.1: 6.1.0-57-amd64 (p1, tcg): 2 passed, 0 failed, 2 skipped, 0 not run, in 1m30s
6.18: 6.18.15+deb13-amd64 (p2, tcg): 2 passed, 1 failed, 1 skipped, 0 not run, in 1m0s
  FAIL on 6.18: TestA/sub: bytes lost
  SKIP on 6.1: TestK: kernel relay off: no kfunc
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	if err := Verdict(runs); err == nil || !strings.Contains(err.Error(), "6.18: FAIL TestA/sub") {
		t.Errorf("verdict: %v", err)
	}
	runs[1].Results[1].Outcome = Pass
	if err := Verdict(runs); err != nil {
		t.Errorf("verdict with passes and skips: %v", err)
	}
}

func TestParseKernels(t *testing.T) {
	deb := filepath.Join(t.TempDir(), "linux-image-5.15.0-1-generic.deb")
	if err := os.WriteFile(deb, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ks, err := ParseKernels("6.1, 6.18,6.6=^linux-image-6\\.6\\..*$,5.15=" + deb)
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, k := range ks {
		labels = append(labels, k.Label)
	}
	if !slices.Equal(labels, []string{"6.1", "6.18", "6.6", "5.15"}) || ks[3].Debs[0] != deb || ks[2].Pattern.String() != `^linux-image-6\.6\..*$` {
		t.Errorf("kernels %+v", ks)
	}
	for _, bad := range []string{"", "4.19", "6.1,6.1", "x=(", "5.15=/nonexistent.deb", "a/b=x"} {
		if _, err := ParseKernels(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestNewest(t *testing.T) {
	names := []string{"linux-image-6.1.0-9-amd64", "linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-cloud-amd64",
		"linux-image-6.12.9+deb12-amd64", "linux-image-6.12.118+deb12-amd64", "linux-image-6.12.118+deb13-amd64", "linux-image-amd64"}
	for _, k := range DefaultKernels[:2] {
		got, ok := Newest(names, k.Pattern)
		want := map[string]string{"6.1": "linux-image-6.1.0-57-amd64", "6.12": "linux-image-6.12.118+deb12-amd64"}[k.Label]
		if !ok || got != want {
			t.Errorf("%s: %q, want %q", k.Label, got, want)
		}
	}
	if _, ok := Newest(names, regexp.MustCompile(`^linux-image-5\.10`)); ok {
		t.Error("found a kernel that is not there")
	}
}

func TestModuleOrder(t *testing.T) {
	dep := `kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz: kernel/fs/fscache/fscache.ko.xz
kernel/fs/fscache/fscache.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
`
	builtin := "kernel/drivers/virtio/virtio_pci.ko\n"
	got, err := moduleOrder(dep, builtin, rootModules)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/net/9p/9pnet.ko.xz", "kernel/drivers/virtio/virtio_ring.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz",
		"kernel/fs/fscache/fscache.ko.xz", "kernel/fs/netfs/netfs.ko.xz", "kernel/fs/9p/9p.ko.xz", "kernel/fs/overlayfs/overlay.ko.xz"}
	if !slices.Equal(got, want) {
		t.Errorf("order\n%v\nwant\n%v", got, want)
	}
	if _, err := moduleOrder(dep, "", rootModules); err == nil {
		t.Error("virtio_pci neither a module nor built in: accepted")
	}
	if _, err := moduleOrder("a.ko: b.ko\nb.ko: a.ko\n", "", []string{"a"}); err == nil {
		t.Error("a dependency loop: accepted")
	}
}

// TestCpioReadsBack: the initramfs archive is what cpio(1) reads.
func TestCpioReadsBack(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatal("cpio is needed (make test installs it)")
	}
	var buf bytes.Buffer
	files := []cpioFile{{name: "bin", mode: 0o040755}, {name: "bin/tool", mode: 0o100755, data: []byte("#!/bin/sh\necho hi\n")}, {name: "odd", mode: 0o100644, data: []byte("12345")}}
	if err := writeCpio(&buf, files); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir, cmd.Stdin = dir, bytes.NewReader(raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	for _, f := range files[1:] {
		got, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil || !bytes.Equal(got, f.data) {
			t.Errorf("%s: %q, %v", f.name, got, err)
		}
		st, _ := os.Stat(filepath.Join(dir, f.name))
		if st != nil && uint32(st.Mode().Perm()) != f.mode&0o777 {
			t.Errorf("%s: mode %v", f.name, st.Mode())
		}
	}
}

func TestQemuArgs(t *testing.T) {
	p := &Prepared{Vmlinuz: "/c/vmlinuz-6.1", Initrd: "/c/initramfs.cpio.gz"}
	args, err := VM{Kernel: p, Out: "/tmp/out", Accel: "tcg", CPUs: 2, Memory: "4G"}.Args()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"-accel tcg,", "-kernel /c/vmlinuz-6.1", "kmatrix.out=/tmp/out", "path=/,security_model=none,readonly=on", "path=/tmp/out,"} {
		if !strings.Contains(line, want) {
			t.Errorf("qemu args lack %q: %s", want, line)
		}
	}
	if _, err := (VM{Kernel: p, Out: "/tmp/a,b", Accel: "kvm", CPUs: 1, Memory: "1G"}).Args(); err == nil {
		t.Error("a comma in a shared path: accepted")
	}
	if _, err := (VM{Kernel: p, Out: "/tmp/x", Accel: "hvf", CPUs: 1, Memory: "1G"}).Args(); err == nil {
		t.Error("an unknown accelerator: accepted")
	}
}

func TestSourcesList(t *testing.T) {
	src := sourcesList("http://mirror.example")
	for _, want := range []string{"http://mirror.example/debian bookworm main", "http://mirror.example/debian trixie-backports main", "http://mirror.example/debian-security bookworm-security main"} {
		if !strings.Contains(src, want) {
			t.Errorf("sources.list lacks %q:\n%s", want, src)
		}
	}
	if n := strings.Count(src, "signed-by="+keyring); n != len(DebianSuites)+len(SecuritySuites) {
		t.Errorf("%d of its lines are signed-by the archive keyring", n)
	}
}
