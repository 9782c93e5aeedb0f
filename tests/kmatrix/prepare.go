// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Prepared is a kernel ready to boot: its packages unpacked, its modules
// indexed, its initramfs built.
type Prepared struct {
	Kernel  Kernel
	Package string // the packages' file names
	Release string // e.g. 6.1.0-57-amd64
	Vmlinuz string
	Modules string // lib/modules/<release> (usr/lib/modules on merged-usr packages)
	Initrd  string
}

// Prepare fetches (Debian archive) or takes (local .deb files) a kernel,
// unpacks it under cache, and builds its initramfs; each step is kept for
// the next run.
func Prepare(k Kernel, cache string, log func(string, ...any)) (*Prepared, error) {
	debs := k.Debs
	if len(debs) == 0 {
		a := apt{dir: filepath.Join(cache, "apt")}
		if err := a.update(log); err != nil {
			return nil, err
		}
		names, err := a.packageNames("linux-image-")
		if err != nil {
			return nil, err
		}
		name, ok := Newest(names, k.Pattern)
		if !ok {
			return nil, fmt.Errorf("kernel %s: no package matches %s", k.Label, k.Pattern)
		}
		file, err := a.download(name, filepath.Join(cache, "debs"))
		if err != nil {
			return nil, err
		}
		debs = []string{file}
	}
	var bases []string
	h := sha256.New()
	for _, d := range debs {
		bases = append(bases, filepath.Base(d))
		fmt.Fprintln(h, filepath.Base(d))
	}
	p := &Prepared{Kernel: k, Package: strings.Join(bases, "+")}
	root := filepath.Join(cache, "kernels", k.Label+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	done := filepath.Join(root, ".unpacked")
	if _, err := os.Stat(done); err != nil {
		log("kernel %s: unpacking %s", k.Label, p.Package)
		if err := os.RemoveAll(root); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		for _, d := range debs {
			if out, err := exec.Command("dpkg-deb", "-x", d, root).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", d, err, strings.TrimSpace(string(out)))
			}
		}
		if err := os.WriteFile(done, nil, 0o644); err != nil {
			return nil, err
		}
	}
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return nil, fmt.Errorf("kernel %s: want one boot/vmlinuz-* in %s, found %d", k.Label, p.Package, len(images))
	}
	p.Vmlinuz = images[0]
	p.Release = strings.TrimPrefix(filepath.Base(p.Vmlinuz), "vmlinuz-")
	for _, base := range []string{root, filepath.Join(root, "usr")} {
		if dir := filepath.Join(base, "lib", "modules", p.Release); isDir(dir) {
			p.Modules = dir
			if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err != nil {
				// Packages leave modules.dep to the installer's depmod.
				if out, err := exec.Command("depmod", "-b", base, p.Release).CombinedOutput(); err != nil {
					return nil, fmt.Errorf("depmod for %s (apt-get install kmod): %w: %s", p.Release, err, out)
				}
			}
			break
		}
	}
	if p.Modules == "" {
		return nil, fmt.Errorf("kernel %s: no lib/modules/%s in %s (give its modules package too)", k.Label, p.Release, p.Package)
	}
	p.Initrd = filepath.Join(root, "initramfs.cpio.gz")
	if err := buildInitramfs(p.Initrd, p.Modules); err != nil {
		return nil, fmt.Errorf("kernel %s: initramfs: %w", k.Label, err)
	}
	return p, nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
