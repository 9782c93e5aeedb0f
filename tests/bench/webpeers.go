// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The peers' sources, build and run scripts (../shared/reference beside the
// repository) and where the bench builds them: outside the repository, once.
const (
	defaultRefSrc   = "../shared/reference"
	defaultRefCache = "/var/cache/pepsal-bench-ref"
	qpepPort        = "1443" // QUIC, UDP, on the gateway
	qpepLocalPort   = "9443" // the terminal's REDIRECT target
)

// Peer versions, as the reference README pins them.
const (
	RefPEPsalVersion = "PEPsal 2.0.2 (CNES, commit 1045d3c8)"
	QPEPVersion      = "QPEP 0.7.1 (Project-Faster fork, commit 11c726bb, quic-go backend)"
)

// Peers are the reference PEPs' binaries, or why each is missing.
type Peers struct {
	Src           string // the reference directory (scripts)
	PEPsal, QPEP  string
	PEPsalMissing string
	QPEPMissing   string
}

// EnsurePeers finds or builds PEPsal 2.0.2 and QPEP with the reference build
// scripts. PEPSAL_REFERENCE_BIN and PEPSAL_BENCH_QPEP_BIN name prebuilt
// binaries; PEPSAL_BENCH_REF_SRC the scripts' directory; PEPSAL_BENCH_REF_CACHE
// the build output. A peer that cannot be built gets its reason instead.
func EnsurePeers(ctx context.Context, cfg Config, getenv func(string) string, log interface{ Info(string, ...any) }) Peers {
	p := Peers{Src: strings.TrimSpace(getenv("PEPSAL_BENCH_REF_SRC"))}
	if p.Src == "" {
		p.Src = defaultRefSrc
	}
	if abs, err := filepath.Abs(p.Src); err == nil {
		p.Src = abs
	}
	cache := strings.TrimSpace(getenv("PEPSAL_BENCH_REF_CACHE"))
	if cache == "" {
		cache = defaultRefCache
	}
	find := func(given, built, script string) (string, string) {
		if given != "" {
			if st, err := os.Stat(given); err != nil || st.IsDir() {
				return "", fmt.Sprintf("%s not found", given)
			}
			return given, ""
		}
		bin := filepath.Join(cache, built)
		if st, err := os.Stat(bin); err == nil && !st.IsDir() {
			return bin, ""
		}
		sh := filepath.Join(p.Src, script)
		if _, err := os.Stat(sh); err != nil {
			return "", fmt.Sprintf("build script %s not found (set PEPSAL_BENCH_REF_SRC)", sh)
		}
		log.Info("building a reference PEP (once)", "script", sh, "into", cache)
		bctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(bctx, "bash", sh, cache).CombinedOutput()
		if err != nil {
			return "", fmt.Sprintf("%s failed: %v: %s", script, err, lastLine(string(out), nil))
		}
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Sprintf("%s did not produce %s", script, bin)
		}
		return bin, ""
	}
	p.PEPsal, p.PEPsalMissing = find(cfg.ReferenceBin, "pepsal-ref", "pepsal-2.0.2/build.sh")
	p.QPEP, p.QPEPMissing = find(strings.TrimSpace(getenv("PEPSAL_BENCH_QPEP_BIN")), "qpep", "qpep/build.sh")
	if p.PEPsal != "" || p.QPEP != "" {
		if err := EnsureIptables(ctx); err != nil {
			msg := "needs iptables: " + err.Error()
			p.PEPsal, p.QPEP = "", ""
			p.PEPsalMissing, p.QPEPMissing = msg, msg
		}
	}
	return p
}

// StartQPEP runs the QPEP server on the gateway (QUIC on gwAddr) and the
// client on the terminal (REDIRECT of the TCP arriving on the terminal's
// client interface) with the reference run scripts, which undo their
// iptables rules when stopped. Each gets its own work directory under dir.
func StartQPEP(ctx context.Context, peers Peers, terminal, gateway Site, gwAddr, dir string) ([]*Daemon, error) {
	srvDir, cliDir := filepath.Join(dir, "qpep-server"), filepath.Join(dir, "qpep-client")
	srv, err := launch(gateway, "env", "QPEP_BIN="+peers.QPEP, "QPEP_WORKDIR="+srvDir,
		"bash", filepath.Join(peers.Src, "qpep/run-server.sh"), gateway.NS.Name, gwAddr)
	if err != nil {
		return nil, err
	}
	srv.ref = true
	listening := func(ns Site, flags, port string) func() bool {
		return func() bool {
			out, _ := ns.NS.Command("ss", flags, "sport = :"+port).Output()
			return len(bytes.TrimSpace(out)) > 0
		}
	}
	if err := srv.waitReady(ctx, listening(gateway, "-Hlun", qpepPort),
		func() string {
			return "QPEP server not listening on udp " + qpepPort + ": " + lastLine(srv.Output(), nil)
		}); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	cli, err := launch(terminal, "env", "QPEP_BIN="+peers.QPEP, "QPEP_WORKDIR="+cliDir,
		"QPEP_CERT="+filepath.Join(srvDir, "server_cert.pem"),
		"bash", filepath.Join(peers.Src, "qpep/run-client.sh"), terminal.NS.Name, terminal.Iface, gwAddr)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	cli.ref = true
	if err := cli.waitReady(ctx, listening(terminal, "-Hltn", qpepLocalPort),
		func() string {
			return "QPEP client not listening on " + qpepLocalPort + ": " + lastLine(cli.Output(), nil)
		}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("terminal: %w", err)
	}
	return []*Daemon{srv, cli}, nil
}
