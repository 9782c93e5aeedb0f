// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// rootModules are what the initramfs needs to mount the host's root over
// 9p with an overlay: loaded in this order, each after its dependencies,
// unless the kernel has it built in.
var rootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// moduleOrder resolves names to module paths (relative to the modules
// directory) in load order, dependencies first, from modules.dep; builtin is
// modules.builtin. A name that is neither is an error.
func moduleOrder(dep, builtin string, names []string) ([]string, error) {
	deps := map[string][]string{} // path -> its dependencies
	byName := map[string]string{} // module name -> path
	sc := bufio.NewScanner(strings.NewReader(dep))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[p] = strings.Fields(rest)
		byName[moduleName(p)] = p
	}
	builtins := map[string]bool{}
	for _, l := range strings.Fields(builtin) {
		builtins[moduleName(l)] = true
	}
	var order []string
	seen := map[string]bool{}
	var add func(p string, chain []string) error
	add = func(p string, chain []string) error {
		if seen[p] {
			return nil
		}
		for _, c := range chain {
			if c == p {
				return fmt.Errorf("module dependency loop: %s", strings.Join(append(chain, p), " -> "))
			}
		}
		for _, d := range deps[p] {
			if err := add(d, append(chain, p)); err != nil {
				return err
			}
		}
		seen[p] = true
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		p, ok := byName[n]
		switch {
		case ok:
			if err := add(p, nil); err != nil {
				return nil, err
			}
		case builtins[n]:
		default:
			return nil, fmt.Errorf("module %s: neither in modules.dep nor built in", n)
		}
	}
	return order, nil
}

// moduleName is a module's name from its path: kernel/fs/9p/9p.ko.xz -> 9p
// (dashes and underscores are the same to the kernel).
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// moduleBytes reads a module, decompressed: insmod in the initramfs is
// busybox's, which may not know xz or zstd.
func moduleBytes(file string) ([]byte, error) {
	var tool []string
	switch {
	case strings.HasSuffix(file, ".xz"):
		tool = []string{"xz", "-dc"}
	case strings.HasSuffix(file, ".zst"):
		tool = []string{"zstd", "-qdc"}
	case strings.HasSuffix(file, ".gz"):
		tool = []string{"gzip", "-dc"}
	default:
		return os.ReadFile(file)
	}
	out, err := exec.Command(tool[0], append(tool[1:], file)...).Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %w", file, tool[0], err)
	}
	return out, nil
}

// cpioFile is one entry of a newc archive.
type cpioFile struct {
	name string
	mode uint32 // with the type bits: 0o040755 for a directory, 0o100755 for a file
	data []byte
}

// writeCpio writes a gzip-compressed newc archive (what the kernel unpacks
// as an initramfs).
func writeCpio(w io.Writer, files []cpioFile) error {
	zw := gzip.NewWriter(w)
	pad := func(n int) error {
		_, err := zw.Write(make([]byte, (4-n%4)%4))
		return err
	}
	entry := func(ino int, f cpioFile) error {
		nlink := 1
		if f.mode&0o170000 == 0o040000 {
			nlink = 2
		}
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, f.mode, 0, 0, nlink, 0, len(f.data), 0, 0, 0, 0, len(f.name)+1, 0)
		if _, err := io.WriteString(zw, hdr+f.name+"\x00"); err != nil {
			return err
		}
		if err := pad(len(hdr) + len(f.name) + 1); err != nil {
			return err
		}
		if _, err := zw.Write(f.data); err != nil {
			return err
		}
		return pad(len(f.data))
	}
	for i, f := range files {
		if err := entry(i+1, f); err != nil {
			return err
		}
	}
	if err := entry(len(files)+1, cpioFile{name: "TRAILER!!!"}); err != nil {
		return err
	}
	return zw.Close()
}

// buildInitramfs writes the initramfs of a kernel whose modules are in
// modDir: busybox, stage 1 (/init), stage 2, and the root's modules.
func buildInitramfs(out, modDir string) error {
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return err
	}
	builtin, _ := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	order, err := moduleOrder(string(dep), string(builtin), rootModules)
	if err != nil {
		return err
	}
	busybox, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	files := []cpioFile{}
	for _, d := range []string{"bin", "lib", "lib/mod", "proc", "sys", "dev", "lower", "upper", "newroot"} {
		files = append(files, cpioFile{name: d, mode: 0o040755})
	}
	files = append(files,
		cpioFile{name: "bin/busybox", mode: 0o100755, data: busybox},
		cpioFile{name: "init", mode: 0o100755, data: stage1},
		cpioFile{name: "stage2.sh", mode: 0o100755, data: stage2},
	)
	var list bytes.Buffer
	for _, p := range order {
		data, err := moduleBytes(filepath.Join(modDir, p))
		if err != nil {
			return err
		}
		name := moduleName(p) + ".ko"
		files = append(files, cpioFile{name: "lib/mod/" + name, mode: 0o100644, data: data})
		fmt.Fprintln(&list, name)
	}
	files = append(files, cpioFile{name: "modules", mode: 0o100644, data: list.Bytes()})
	var buf bytes.Buffer
	if err := writeCpio(&buf, files); err != nil {
		return err
	}
	tmp := out + ".new"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

const busyboxPath = "/bin/busybox"
