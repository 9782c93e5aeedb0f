// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
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
	f := newPeerFinder(ctx, getenv, log)
	p := Peers{Src: f.src}
	p.PEPsal, p.PEPsalMissing = f.find(cfg.ReferenceBin, "pepsal-ref", "pepsal-2.0.2/build.sh")
	p.QPEP, p.QPEPMissing = f.find(strings.TrimSpace(getenv("PEPSAL_BENCH_QPEP_BIN")), "qpep", "qpep/build.sh")
	if p.PEPsal != "" || p.QPEP != "" {
		if err := EnsureIptables(ctx); err != nil {
			msg := "needs iptables: " + err.Error()
			p.PEPsal, p.QPEP = "", ""
			p.PEPsalMissing, p.QPEPMissing = msg, msg
		}
	}
	return p
}

// EnsureReference finds or builds PEPsal 2.0.2 alone, as EnsurePeers does,
// for the reference row of the satellite tables: the binary, or why not.
func EnsureReference(ctx context.Context, cfg Config, getenv func(string) string, log interface{ Info(string, ...any) }) (bin, missing string) {
	bin, missing = newPeerFinder(ctx, getenv, log).find(cfg.ReferenceBin, "pepsal-ref", "pepsal-2.0.2/build.sh")
	if bin != "" {
		if err := EnsureIptables(ctx); err != nil {
			return "", "needs iptables: " + err.Error()
		}
	}
	return bin, missing
}

// peerFinder finds a peer's binary: given, already built in the cache, or
// built there by its script from the reference directory.
type peerFinder struct {
	ctx          context.Context
	src, srcName string // the reference directory, absolute and as set
	cache        string
	log          interface{ Info(string, ...any) }
}

func newPeerFinder(ctx context.Context, getenv func(string) string, log interface{ Info(string, ...any) }) peerFinder {
	f := peerFinder{ctx: ctx, log: log, srcName: strings.TrimSpace(getenv("PEPSAL_BENCH_REF_SRC")), cache: strings.TrimSpace(getenv("PEPSAL_BENCH_REF_CACHE"))}
	if f.srcName == "" {
		f.srcName = defaultRefSrc
	}
	f.src = f.srcName
	if abs, err := filepath.Abs(f.src); err == nil {
		f.src = abs
	}
	if f.cache == "" {
		f.cache = defaultRefCache
	}
	return f
}

// find returns the binary or, when there is none, why: the reason reads
// after "not run: " in a report.
func (f peerFinder) find(given, built, script string) (string, string) {
	if given != "" {
		if st, err := os.Stat(given); err != nil || st.IsDir() {
			return "", fmt.Sprintf("%s not found", given)
		}
		return given, ""
	}
	bin := filepath.Join(f.cache, built)
	if st, err := os.Stat(bin); err == nil && !st.IsDir() {
		return bin, ""
	}
	if st, err := os.Stat(f.src); err != nil || !st.IsDir() {
		return "", fmt.Sprintf("%s absent (PEPSAL_BENCH_REF_SRC)", f.srcName)
	}
	sh := filepath.Join(f.src, script)
	if _, err := os.Stat(sh); err != nil {
		return "", fmt.Sprintf("build script %s not found (set PEPSAL_BENCH_REF_SRC)", sh)
	}
	f.log.Info("building a reference PEP (once)", "script", sh, "into", f.cache)
	bctx, cancel := context.WithTimeout(f.ctx, 15*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(bctx, "bash", sh, f.cache).CombinedOutput()
	if err != nil {
		return "", fmt.Sprintf("%s failed: %v: %s", script, err, lastLine(string(out), nil))
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Sprintf("%s did not produce %s", script, bin)
	}
	return bin, ""
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

// keepAlive sends a 1 kB download through QPEP's tunnel every second: its
// QUIC session dies after 2 s idle and the next connection then fails (see
// the reference README); a deployed QPEP would see background traffic.
func (b *webBed) keepAlive(ctx context.Context) {
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for kctx.Err() == nil {
			dctx, c := context.WithTimeout(kctx, 10*time.Second)
			if _, err := Download(dctx, b.client, b.traffic.Addr, 1000); err != nil && kctx.Err() == nil {
				b.keepFailed.Add(1)
			}
			c()
			select {
			case <-kctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	b.stopKeep = func() { cancel(); <-done }
}

// warmQPEP makes sure QPEP's tunnel works just before a load, as the
// reference validation does: after its QUIC session died, the first
// connection fails and the next one re-dials.
func (b *webBed) warmQPEP(ctx context.Context, log *slog.Logger) {
	for try := range 3 {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := Download(wctx, b.client, b.traffic.Addr, 1000)
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		log.Debug("QPEP warm-up failed", "try", try+1, "err", err)
	}
}
