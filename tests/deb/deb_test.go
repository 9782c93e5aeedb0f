// SPDX-License-Identifier: Apache-2.0

// Package deb tests the Debian packages `make package` builds: their
// version from git, what they hold, and a package's life on a router
// (install, live upgrade, remove, purge) in namespaces that leave the
// host untouched.
package deb

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// repo is the source tree's root (this package is tests/deb).
func repo(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDebVersion: the Debian version of a build sorts after every earlier
// build and release, as dpkg compares them.
func TestDebVersion(t *testing.T) {
	const epoch = "1796664965" // 2026-12-07 17:36:05 UTC
	cases := []struct{ describe, want string }{
		{"dev", "0.0.0~git20261207.173605.dev"}, // outside git
		{"fb1ff52", "0.0.0~git20261207.173605.fb1ff52"},
		{"fb1ff52-dirty", "0.0.0~git20261207.173605.fb1ff52.dirty"},
		{"v1.2.0-rc1", "1.2.0~rc1"},
		{"v1.2.0-rc1-3-gab12cd3", "1.2.0~rc1+git20261207.173605.ab12cd3"},
		{"v1.2.0", "1.2.0"},
		{"v1.2.0-dirty", "1.2.0+dirty"},
		{"v1.2.0-4-gab12cd3", "1.2.0+git20261207.173605.ab12cd3"},
		{"v1.2.0-4-gab12cd3-dirty", "1.2.0+git20261207.173605.ab12cd3.dirty"},
		{"1.10.0", "1.10.0"},
	}
	script := filepath.Join(repo(t), "packaging/deb/version.sh")
	var got []string
	for _, c := range cases {
		out, err := exec.Command(script, c.describe, epoch).CombinedOutput()
		v := strings.TrimSpace(string(out))
		if err != nil || v != c.want {
			t.Errorf("version.sh %s: %q (%v), want %q", c.describe, v, err, c.want)
		}
		got = append(got, v)
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg to compare versions")
	}
	for i := 1; i < len(got); i++ { // the cases are in build order
		if err := exec.Command("dpkg", "--compare-versions", got[i-1], "lt", got[i]).Run(); err != nil {
			t.Errorf("dpkg does not sort %s before %s", got[i-1], got[i])
		}
	}
}

// scratch holds the packages the tests share; TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	var err error
	if scratch, err = os.MkdirTemp("", "pepsal-deb-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(scratch)
	os.Exit(code)
}

// first is the build of version pkgtest1 for both architectures, made
// once for the tests that use it.
var first struct {
	once sync.Once
	debs map[string]string
	out  string
	err  error
}

// firstPackages are the pkgtest1 packages by architecture, and the
// directory make package wrote them to.
func firstPackages(t *testing.T) (map[string]string, string) {
	t.Helper()
	dist := filepath.Join(scratch, "first")
	first.once.Do(func() { first.debs, first.out, first.err = makePackage(dist, "pkgtest1", "amd64", "arm64") })
	if first.err != nil {
		t.Fatalf("%v\n%s", first.err, first.out)
	}
	return first.debs, dist
}

// makePackage runs `make package` into dist for arches, the binary saying
// version; it returns the packages by architecture, and make's output.
func makePackage(dist, version string, arches ...string) (map[string]string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // a first cross-build compiles the standard library
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "package", "DIST="+dist, "VERSION="+version,
		"PKG_ARCHES="+strings.Join(arches, " "), "DEB_COMPRESS=gzip")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("make package: %w", err)
	}
	debs := map[string]string{}
	for _, arch := range arches {
		m, _ := filepath.Glob(filepath.Join(dist, "pepsal_*_"+arch+".deb"))
		if len(m) != 1 {
			return nil, string(out), fmt.Errorf("make package made %v for %s", m, arch)
		}
		debs[arch] = m[0]
	}
	return debs, string(out), nil
}

func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds packages: not in -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, dpkg, BPF)")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg", "unshare", "systemd-analyze", "man"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it)", tool)
		}
	}
}

// hostArch is this machine's Debian architecture, when make package builds it.
func hostArch(t *testing.T) string {
	switch runtime.GOARCH {
	case "amd64", "arm64":
		return runtime.GOARCH
	}
	t.Skipf("make package builds amd64 and arm64, not %s", runtime.GOARCH)
	return ""
}

// TestPackageContents: one package per architecture, each with a static
// binary for it and the control fields a Debian system needs.
func TestPackageContents(t *testing.T) {
	needRoot(t)
	debs, _ := firstPackages(t)
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch, deb := range debs {
		fields, err := exec.Command("dpkg-deb", "-f", deb, "Package", "Architecture", "Version", "Depends").Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", deb, err)
		}
		want := fmt.Sprintf("Package: pepsal\nArchitecture: %s\nVersion: 0.0.0~git", arch)
		if !strings.HasPrefix(string(fields), want) || !strings.Contains(string(fields), ".pkgtest1-1\nDepends: procps\n") {
			t.Errorf("%s: control fields\n%s\nwant them to start with\n%s", deb, fields, want)
		}
		root := filepath.Join(t.TempDir(), arch)
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
		}
		f, err := elf.Open(filepath.Join(root, "usr/sbin/pepsal"))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: /usr/sbin/pepsal is dynamically linked", deb)
			}
		}
		if f.Machine != machines[arch] {
			t.Errorf("%s: /usr/sbin/pepsal is for %v", deb, f.Machine)
		}
		f.Close()
		info, err := buildinfo.ReadFile(filepath.Join(root, "usr/sbin/pepsal"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range info.Deps {
			if strings.Contains(m.Path, "md2man") {
				t.Errorf("%s: /usr/sbin/pepsal links %s: the man page generator ships", deb, m.Path)
			}
		}
	}
}

// netnsLine is where lifecycle.sh says its network namespace.
var netnsLine = regexp.MustCompile(`(?m)^netns net:\[(\d+)\]$`)

// TestPackageLifecycle installs a package, upgrades it under a running
// daemon, removes and purges it (testdata/lifecycle.sh says each check), in
// namespaces whose changes vanish with them: the host's files, dpkg
// database and network stay as they were.
func TestPackageLifecycle(t *testing.T) {
	needRoot(t)
	arch := hostArch(t)
	dir := t.TempDir()
	debs, dist := firstPackages(t)
	old := debs[arch]
	newDebs, out, err := makePackage(filepath.Join(dir, "new"), "pkgtest2", arch)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	newer := newDebs[arch]
	hostBin := filepath.Join(dist, "build", arch, "pepsal") // detaches what a failed run left
	work := filepath.Join(dir, "ns")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	hostBefore := hostState()

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	// The script is PID 1 of its namespace: when it ends, or unshare is
	// killed (--kill-child), every process it started dies with it.
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
		"--propagation", "private", "bash", filepath.Join(repo(t), "tests/deb/testdata/lifecycle.sh"), old, newer, work, hostBin)
	var script bytes.Buffer
	cmd.Stdout, cmd.Stderr = &script, &script
	err = cmd.Run()
	if m := netnsLine.FindStringSubmatch(script.String()); m != nil {
		// The pins of a namespace that is gone: removing them releases its programs.
		pins := filepath.Join("/sys/fs/bpf/pepsal", "netns-"+m[1])
		if _, serr := os.Stat(pins); serr == nil {
			t.Errorf("%s left behind", pins)
			os.RemoveAll(pins)
		}
	}
	if err != nil {
		t.Fatalf("lifecycle.sh: %v\n%s", err, script.String())
	}
	t.Logf("lifecycle.sh:\n%s", script.String())
	if after := hostState(); after != hostBefore {
		t.Errorf("the host changed: before\n%s\nafter\n%s", hostBefore, after)
	}
}

// hostState is what the test must not change on the host: whether dpkg
// knows pepsal, and the files the package would install.
func hostState() string {
	var b strings.Builder
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status} ${Version}", "pepsal").CombinedOutput()
	fmt.Fprintf(&b, "dpkg-query: %s (%v)\n", strings.TrimSpace(string(out)), err)
	for _, f := range []string{"/usr/sbin/pepsal", "/usr/lib/systemd/system/pepsal.service", "/etc/default/pepsal", "/usr/share/doc/pepsal", "/usr/share/man/man8/pepsal.8.gz"} {
		_, err := os.Lstat(f)
		fmt.Fprintf(&b, "%s: exists %v\n", f, err == nil)
	}
	return b.String()
}
