// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// TestOutageStudy is a throwaway experiment for issue #24, not a test: a
// 10 MB download over the two-PEP GEO bed whose link drops everything for
// 20 s starting 3 s into the transfer, with `ss -tinoem` sampled every
// 200 ms and nstat every second in every namespace, written to
// PEPSAL_OUTAGE_STUDY_DIR (default /tmp/outage-study) for reading by hand.
// tests/linkemu/OUTAGE-STUDY.md has what it found. It runs only with
// PEPSAL_OUTAGE_STUDY=1:
//
//	make build && PEPSAL_OUTAGE_STUDY=1 PEPSAL_TEST_BINARY=$PWD/bin/pepsal \
//	  go test -count=1 -v -timeout 30m -run TestOutageStudy ./tests/bench/
//
// PEPSAL_OUTAGE_STUDY_MODES picks the rows (default "none pepsal
// pepsal-rtomax pepsal-kick"): no proxy, two pepsals with warm paths
// (splice), and two pepsals with prototypes of a fix, named by words in the
// mode: "rtomax" sets net.ipv4.tcp_rto_max_ms=PEPSAL_OUTAGE_STUDY_RTOMAX
// (default 1000) in the terminal's and gateway's namespaces, "nots" and
// "nosack" turn TCP timestamps and SACK off there, "kick" runs the kicker of outage_kick_test.go
// at the gateway (e.g. "pepsal-kick-rtomax"), "rto0" runs both pepsals with
// --rto-max 0 (their default bounds the long legs), "noprobe" with
// --outage-probe 0 (their default kicks the stalled legs at the link's
// return), "steady" keeps the link
// up (no outage: the bound must cost nothing there).
func TestOutageStudy(t *testing.T) {
	if os.Getenv("PEPSAL_OUTAGE_STUDY") != "1" {
		t.Skip("an experiment, not a test: set PEPSAL_OUTAGE_STUDY=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := envOr("PEPSAL_OUTAGE_STUDY_DIR", "/tmp/outage-study")
	modes := strings.Fields(envOr("PEPSAL_OUTAGE_STUDY_MODES", "none pepsal pepsal-rtomax pepsal-kick"))
	for _, m := range modes {
		t.Run(m, func(t *testing.T) {
			out := filepath.Join(dir, m)
			if err := os.MkdirAll(out, 0o755); err != nil {
				t.Fatal(err)
			}
			sum, err := studyOnce(t, m, out)
			if err != nil {
				t.Error(err)
			}
			t.Log(sum)
			_ = os.WriteFile(filepath.Join(out, "summary.txt"), []byte(sum+"\n"), 0o644)
		})
	}
}

// studySysctls applies the sysctls a mode names to both PEPs' namespaces,
// before pepsal makes its sockets: "rtomax" sets net.ipv4.tcp_rto_max_ms,
// "nots" turns TCP timestamps off, "nosack" SACK.
func studySysctls(mode string, sites []Site) error {
	for _, s := range sites {
		if strings.Contains(mode, "rtomax") {
			if err := s.NS.Sysctl("net.ipv4.tcp_rto_max_ms", envOr("PEPSAL_OUTAGE_STUDY_RTOMAX", "1000")); err != nil {
				return err
			}
		}
		if strings.Contains(mode, "nots") {
			if err := s.NS.Sysctl("net.ipv4.tcp_timestamps", "0"); err != nil {
				return err
			}
		}
		if strings.Contains(mode, "nosack") {
			if err := s.NS.Sysctl("net.ipv4.tcp_sack", "0"); err != nil {
				return err
			}
		}
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

const (
	studyStart = 3 * time.Second
	studySize  = 10e6
)

// studyOnce builds the bed for mode, runs the download with the samplers
// and returns a summary.
func studyOnce(t *testing.T, mode, out string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	link := linkemu.GeoFade(studyStart)
	link.Schedule.WaitArm = true // the bed, the proxies and their warm paths first
	if strings.Contains(mode, "steady") {
		link.Schedule.Outages = nil
	}
	bed, err := NewBed(TwoPEP, &link, "ost", "cubic")
	if err != nil {
		return "", err
	}
	defer bed.Close()
	if err := studySysctls(mode, bed.Sites); err != nil {
		return "", err
	}
	if mode != "none" {
		cfg := Config{Pepsal: pepsalBin, WarmPaths: true}
		removeKey, err := cfg.MakePeerKey()
		if err != nil {
			return "", err
		}
		defer removeKey()
		for word, args := range map[string][]string{"rto0": {"--rto-max", "0"}, "noprobe": {"--outage-probe", "0"}} {
			if strings.Contains(mode, word) {
				cfg.TerminalArgs = append(cfg.argsFor("terminal"), args...)
				cfg.ExtraArgs = append(cfg.argsFor("gateway"), args...)
			}
		}
		ds, err := StartProxies(ctx, cfg, Mode{Name: mode, Relay: "splice"}, bed.Sites)
		if err != nil {
			return "", err
		}
		defer StopAll(ds)
		defer func() { // the daemons' logs' tails, beside the samples
			for _, d := range ds {
				_ = os.WriteFile(filepath.Join(out, "pepsal-"+d.Site.Name+".log"), []byte(d.Output()), 0o644)
			}
		}()
	}
	// Neighbour resolution and the warm paths' first use are not the study's.
	if _, err := Download(ctx, bed.Client, bed.Server.Addr, 1000); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	nss := map[string]*testbed.NS{"client": bed.Client, "server": bed.SrvNS}
	for _, s := range bed.Sites {
		nss[s.Name] = s.NS
	}
	sctx, stop := context.WithCancel(ctx)
	var kick *kicker
	if strings.Contains(mode, "kick") {
		if kick, err = startKicker(sctx, bed.Sites[0].NS, testbed.GatewayLinkIf, testbed.GatewayLinkV4, testbed.TerminalLinkV4); err != nil {
			stop()
			return "", err
		}
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	for name, ns := range nss {
		wg.Add(2)
		go func() {
			defer wg.Done()
			sample(sctx, t0, 200*time.Millisecond, filepath.Join(out, "ss-"+name+".log"), ns, "ss", "-tinoemH")
		}()
		go func() {
			defer wg.Done()
			sample(sctx, t0, time.Second, filepath.Join(out, "nstat-"+name+".log"), ns, "nstat", "-asz")
		}()
	}
	time.Sleep(time.Second) // samples before the transfer
	armed := bed.bridge.Arm()
	prog, err := progressDownload(ctx, bed.Client, bed.Server.Addr, studySize, armed)
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()
	st := bed.bridge.Stats()
	writeProgress(filepath.Join(out, "progress.log"), prog)
	sum := summarize(mode, t0, armed, prog, st)
	if kick != nil {
		flows, errs := kick.counts()
		sum += fmt.Sprintf("; kicked %d flows with %d ICMP errors", flows, errs)
	}
	return sum, err
}

// point is the bytes received by an instant, counted from the arming.
type point struct {
	at    time.Duration
	bytes int64
}

// progressDownload is Download that records every read.
func progressDownload(ctx context.Context, ns *testbed.NS, addr string, size int64, armed time.Time) ([]point, error) {
	c, _, done, err := dial(ctx, ns, addr)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := request(c, opDownload, size); err != nil {
		return nil, err
	}
	var prog []point
	var got int64
	buf := make([]byte, ioChunk)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			got += int64(n)
			prog = append(prog, point{time.Since(armed), got})
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return prog, fmt.Errorf("after %d bytes: %w", got, err)
		}
	}
	if got != size {
		return prog, fmt.Errorf("%w: %d of %d", ErrShort, got, size)
	}
	return prog, nil
}

// sample runs a command in ns every period until ctx ends and appends its
// output to path, each sample headed by its time since t0.
func sample(ctx context.Context, t0 time.Time, period time.Duration, path string, ns *testbed.NS, name string, args ...string) {
	f, err := os.Create(path)
	if err != nil {
		slog.Error("sample", "err", err)
		return
	}
	defer f.Close()
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		at := time.Since(t0)
		b, _ := ns.Command(name, args...).Output()
		fmt.Fprintf(f, "### t=%.3f\n%s", at.Seconds(), b)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func writeProgress(path string, prog []point) {
	var b strings.Builder
	for _, p := range prog {
		fmt.Fprintf(&b, "%.3f %d\n", p.at.Seconds(), p.bytes)
	}
	_ = os.WriteFile(path, []byte(b.String()), 0o644)
}

// summarize says when the transfer ended, how many bytes had arrived when
// the link went down, and when the first byte after the outage came.
func summarize(mode string, t0, armed time.Time, prog []point, st linkemu.Stats) string {
	end := studyStart + linkemu.GeoFadeOutage
	var before int64
	resumed := time.Duration(-1)
	for _, p := range prog {
		if p.at < end {
			before = p.bytes
		} else if resumed < 0 && p.bytes > before {
			resumed = p.at
		}
	}
	total := time.Duration(0)
	if len(prog) > 0 {
		total = prog[len(prog)-1].at
	}
	return fmt.Sprintf("%s: armed at t=%.3f (sampler clock); %d bytes before the link came back at %v; first byte after it at %v (%v after); last byte at %v; link drops by outage down %d up %d",
		mode, armed.Sub(t0).Seconds(), before, end, resumed, resumed-end, total, st.Down.DropOutage, st.Up.DropOutage)
}
