// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Mirror is the Debian archive the kernels come from ($DEBIAN_MIRROR
// overrides it); DebianSuites are the suites searched, so that every
// default kernel (bookworm, its backports and security updates, trixie's
// backports) is found.
var (
	Mirror         = "http://deb.debian.org"
	DebianSuites   = []string{"bookworm", "bookworm-updates", "bookworm-backports", "trixie", "trixie-updates", "trixie-backports"}
	SecuritySuites = []string{"bookworm-security", "trixie-security"}
)

const keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// apt runs apt-get and apt-cache with their own sources, lists and cache
// under dir: the host's apt configuration and state are never touched.
type apt struct{ dir string }

func (a apt) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/nonexistent",
		"-o", "Dir::Etc::Preferences=/dev/null",
		"-o", "Dir::Etc::PreferencesParts=/nonexistent",
		"-o", "Dir::State=" + filepath.Join(a.dir, "state"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "APT::Architecture=amd64",
		"-o", "APT::Sandbox::User=root",
		"-o", "Debug::NoLocking=1",
	}
}

// sourcesList is the sources.list of the private apt.
func sourcesList(mirror string) string {
	var b strings.Builder
	for _, s := range DebianSuites {
		fmt.Fprintf(&b, "deb [signed-by=%s] %s/debian %s main\n", keyring, mirror, s)
	}
	for _, s := range SecuritySuites {
		fmt.Fprintf(&b, "deb [signed-by=%s] %s/debian-security %s main\n", keyring, mirror, s)
	}
	return b.String()
}

// update writes the sources and refreshes the package lists once a day.
func (a apt) update(log func(string, ...any)) error {
	for _, d := range []string{"state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	mirror := Mirror
	if m := os.Getenv("DEBIAN_MIRROR"); m != "" {
		mirror = strings.TrimRight(m, "/")
	}
	src := filepath.Join(a.dir, "sources.list")
	old, _ := os.ReadFile(src)
	fresh := string(old) == sourcesList(mirror)
	if st, err := os.Stat(filepath.Join(a.dir, "updated")); fresh && err == nil && time.Since(st.ModTime()) < 24*time.Hour {
		return nil
	}
	if err := os.WriteFile(src, []byte(sourcesList(mirror)), 0o644); err != nil {
		return err
	}
	log("apt-get update (private lists in %s)", a.dir)
	if _, err := a.run("apt-get", "update", "-qq"); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(a.dir, "updated"), nil, 0o644)
}

func (a apt) run(tool string, args ...string) (string, error) {
	cmd := exec.Command(tool, append(a.options(), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// packageNames lists the archive's package names that start with prefix.
func (a apt) packageNames(prefix string) ([]string, error) {
	out, err := a.run("apt-cache", "pkgnames", prefix)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// download fetches a package's candidate version into dir and returns the file.
func (a apt) download(name, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	version, err := a.run("apt-cache", "policy", name)
	if err != nil {
		return "", err
	}
	cand := ""
	for _, l := range strings.Split(version, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate: "); ok {
			cand = v
		}
	}
	if cand == "" || cand == "(none)" {
		return "", fmt.Errorf("no version of %s in the archive", name)
	}
	file := filepath.Join(dir, fmt.Sprintf("%s_%s_amd64.deb", name, strings.ReplaceAll(cand, ":", "%3a")))
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	cmd := exec.Command("apt-get", append(a.options(), "download", "-qq", name)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(file); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w", name, err)
	}
	return file, nil
}
