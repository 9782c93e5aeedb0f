// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/userspace/report"
)

// EchoSize is the message of the request/response latency test.
const EchoSize = 64

// SlowLink is the client's link of the memory test: a fast server sending
// into it must be held back somewhere, and the test shows where.
var SlowLink = linkemu.Link{
	Down: linkemu.Dir{Delay: 5 * time.Millisecond, RateBps: 10e6},
	Up:   linkemu.Dir{Delay: 5 * time.Millisecond, RateBps: 10e6},
	Seed: 1,
}

// EffRow is one mode's relay efficiency.
type EffRow struct {
	Mode        Mode
	Unavailable string
	Streams     map[int][]StreamResult // per number of streams, one per repetition
	RTTs        []float64              // request/response round trips (s), all repetitions
	Mem         MemResult
	Errors      []string
}

// streamCounts are the parallel connections of the throughput tests.
var streamCounts = []int{1, 8}

// StreamResult is one throughput measurement on plain veth.
type StreamResult struct {
	Streams  int
	Bytes    int64
	Elapsed  time.Duration
	BusySecs float64 // non-idle CPU time of the whole machine meanwhile
	// KernelShare is the part of the relayed bytes that the sockmap relay
	// moved in the kernel (the rest it left to userspace); NaN for others.
	KernelShare float64
}

// Bps is the throughput in bits per second.
func (s StreamResult) Bps() float64 {
	if s.Elapsed <= 0 {
		return math.NaN()
	}
	return float64(s.Bytes) * 8 / s.Elapsed.Seconds()
}

// CPUPerGB is CPU seconds spent per 10^9 bytes moved.
func (s StreamResult) CPUPerGB() float64 {
	if s.Bytes <= 0 {
		return math.NaN()
	}
	return s.BusySecs / (float64(s.Bytes) / 1e9)
}

// MemResult is what one slow connection held after the test duration.
type MemResult struct {
	Unavailable    string
	Used, Slab     int64 // growth of MemTotal-MemAvailable and of Slab
	TCPMem         int64 // growth of TCP socket buffer memory (sockstat)
	RSSBefore      int64 // proxy daemon (summed over sites); -1 without one
	RSSAfter       int64
	Sent, Received int64 // payload the server wrote, the client read
	Duration       time.Duration
}

// EffResult is the relay efficiency part.
type EffResult struct {
	Rows           []*EffRow
	Reps           int
	StreamDuration time.Duration
	EchoCount      int
	MemDuration    time.Duration // 0: memory not measured
}

// effReps is how often the veth tests repeat: they are short and noisy, the
// memory test is long and is done once.
func effReps(cfg Config) int { return max(1, min(cfg.Runs, 3)) }

// RunEfficiency measures each mode behind a 10 Mbit/s link (memory), then
// the modes on plain veth (throughput, CPU, latency), repeating and
// interleaving them so that a noisy moment does not hit a single mode. Nothing else
// should run on the machine meanwhile: the CPU and memory counters are
// machine-wide.
func RunEfficiency(ctx context.Context, cfg Config, log *slog.Logger) (res *EffResult, err error) {
	res = &EffResult{Reps: effReps(cfg), StreamDuration: cfg.StreamDuration, EchoCount: cfg.EchoCount}
	if cfg.Memory {
		res.MemDuration = cfg.MemDuration
	}
	type vethBed struct {
		row     *EffRow
		bed     *Bed
		daemons []*Daemon
	}
	// Memory first: after the veth tests the machine gives memory back for
	// tens of seconds, which would hide what one connection holds.
	for i, m := range cfg.Modes() {
		row := &EffRow{Mode: m, Streams: map[int][]StreamResult{}}
		res.Rows = append(res.Rows, row)
		if !cfg.Memory {
			continue
		}
		log.Info("slow connection memory", "mode", m.Name, "for", cfg.MemDuration)
		if err := row.measureMemory(ctx, cfg, fmt.Sprintf("pm%d", i)); err != nil {
			return res, err
		}
	}
	var beds []vethBed
	defer func() {
		for _, b := range beds {
			StopAll(b.daemons)
			err = errors.Join(err, b.bed.Close())
		}
	}()
	for i, row := range res.Rows {
		bed, err := NewBed(Plain, nil, fmt.Sprintf("pe%d", i), cfg.ServerCC)
		if err != nil {
			return res, err
		}
		ds, err := StartProxies(ctx, cfg, row.Mode, bed.Sites)
		if err != nil {
			bed.Close()
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			row.Unavailable = err.Error()
			continue
		}
		beds = append(beds, vethBed{row, bed, ds})
	}
	for rep := range res.Reps {
		for _, b := range beds {
			log.Info("relay efficiency", "mode", b.row.Mode.Name, "repetition", fmt.Sprintf("%d/%d", rep+1, res.Reps))
			if err := b.row.measureVeth(ctx, cfg, b.bed, b.daemons); err != nil {
				return res, err
			}
		}
	}
	for _, b := range beds {
		StopAll(b.daemons)
		err = errors.Join(err, b.bed.Close())
	}
	beds = nil
	if err != nil {
		return res, err
	}
	return res, nil
}

// measureVeth does one repetition of the veth tests. It returns an error only
// for what stops the whole benchmark (Ctrl-C, /proc); a failed measurement
// is noted in the row.
func (row *EffRow) measureVeth(ctx context.Context, cfg Config, bed *Bed, ds []*Daemon) error {
	for _, n := range streamCounts {
		kernel0, total0, _ := kernelBytes(ctx, ds)
		cpu0, err := ReadCPU()
		if err != nil {
			return err
		}
		bytes, elapsed, serr := Stream(ctx, bed.Client, bed.Server.Addr, n, cfg.StreamDuration)
		cpu1, err := ReadCPU()
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if serr != nil {
			row.Errors = append(row.Errors, fmt.Sprintf("%d streams: %v", n, serr))
		}
		share := math.NaN()
		if kernel1, total1, ok := kernelBytes(ctx, ds); ok && row.Mode.Relay == "sockmap" && total1 > total0 {
			share = float64(kernel1-kernel0) / float64(total1-total0)
		}
		row.Streams[n] = append(row.Streams[n], StreamResult{Streams: n, Bytes: bytes, Elapsed: elapsed, BusySecs: BusySeconds(cpu0, cpu1), KernelShare: share})
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	rtts, eerr := EchoLatency(tctx, bed.Client, bed.Server.Addr, EchoSize, cfg.EchoCount)
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if eerr != nil {
		row.Errors = append(row.Errors, fmt.Sprintf("echo: %v", eerr))
	}
	row.RTTs = append(row.RTTs, Seconds(rtts)...)
	return nil
}

// kernelBytes reads, from the pepsal daemons, the bytes of their closed
// connections and how many of them the kernel moved, once the connections of
// the last test are closed (up to 2 s). ok is false without pepsal.
func kernelBytes(ctx context.Context, ds []*Daemon) (kernel, total uint64, ok bool) {
	for _, d := range ds {
		var st report.StatusReport
		for deadline := time.Now().Add(2 * time.Second); ; {
			var err error
			st, err = d.Status()
			if err != nil || st.Daemon == nil {
				return 0, 0, false
			}
			if st.Daemon.Stats.Active == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		s := st.Daemon.Stats
		kernel += s.KernelBytes
		total += s.BytesToServer + s.BytesToClient
	}
	return kernel, total, len(ds) > 0
}

// medianBps and medianCPU summarise the repetitions of one stream count.
func (row *EffRow) medianBps(n int) float64 {
	var xs []float64
	for _, s := range row.Streams[n] {
		xs = append(xs, s.Bps())
	}
	return Median(xs)
}

func (row *EffRow) medianShare(n int) float64 {
	var xs []float64
	for _, s := range row.Streams[n] {
		xs = append(xs, s.KernelShare)
	}
	return Median(xs)
}

func (row *EffRow) medianCPU(n int) float64 {
	var xs []float64
	for _, s := range row.Streams[n] {
		xs = append(xs, s.CPUPerGB())
	}
	return Median(xs)
}

// measureMemory lets a server send as fast as it can to a client behind
// SlowLink for cfg.MemDuration and reports what the machine holds meanwhile.
func (row *EffRow) measureMemory(ctx context.Context, cfg Config, prefix string) (err error) {
	link := SlowLink
	bed, err := NewBed(Gateway, &link, prefix, cfg.ServerCC)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, bed.Close()) }()
	ds, err := StartProxies(ctx, cfg, row.Mode, bed.Sites)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		row.Mem.Unavailable = err.Error()
		return nil
	}
	defer StopAll(ds)
	rss := func() int64 {
		if len(ds) == 0 {
			return -1
		}
		var sum int64
		for _, d := range ds {
			n, err := ReadRSS(d.PID)
			if err != nil {
				return -1
			}
			sum += n
		}
		return sum
	}
	m0, err := settledMem(ctx)
	if err != nil {
		return err
	}
	r := &row.Mem
	r.RSSBefore = rss()
	tcp0, err := ReadTCPMem()
	if err != nil {
		return err
	}
	sent0 := bed.Server.Sent()

	dctx, stop := context.WithCancel(ctx)
	defer stop()
	type dl struct {
		r   Result
		err error
	}
	done := make(chan dl, 1)
	go func() {
		res, err := Download(dctx, bed.Client, bed.Server.Addr, Unbounded)
		done <- dl{res, err}
	}()
	start := time.Now()
	select {
	case <-time.After(cfg.MemDuration):
	case <-ctx.Done():
		return ctx.Err()
	case d := <-done:
		row.Mem.Unavailable = fmt.Sprintf("download ended early: %v", d.err)
		return nil
	}
	freeGarbage()
	m1, err := ReadMem()
	if err != nil {
		return err
	}
	r.RSSAfter = rss()
	tcp1, err := ReadTCPMem()
	if err != nil {
		return err
	}
	r.TCPMem = tcp1 - tcp0
	r.Sent = bed.Server.Sent() - sent0
	r.Duration = time.Since(start)
	stop()
	d := <-done
	r.Received = d.r.Bytes
	r.Used = m1.Used - m0.Used
	r.Slab = m1.Slab - m0.Slab
	return nil
}

// Tables renders the throughput/CPU/latency table and the memory table.
func (r *EffResult) Tables() []Table {
	var base *EffRow
	for _, row := range r.Rows {
		if !row.Mode.Proxied() && row.Unavailable == "" {
			base = row
		}
	}
	perf := Table{
		Title: fmt.Sprintf("### Relay efficiency, plain veth (client -- router(PEP) -- server; %s per throughput test, %d round trips of %d bytes; %s, interleaved)",
			r.StreamDuration, r.EchoCount, EchoSize, medianOf(r.Reps)),
		Header: []string{"mode", "1 stream", "8 streams", "CPU s/GB, 1 stream", "CPU s/GB, 8 streams", "RR p50", "RR p99", "moved in kernel, 1 / 8 streams"},
	}
	mem := Table{
		Title: fmt.Sprintf("### Memory held for one slow connection (server sending as fast as it can to a client behind %s, %s)",
			DescribeLink(SlowLink), r.MemDuration),
		Header: []string{"mode", "MemTotal-MemAvailable growth", "Slab growth", "TCP buffers growth", "daemon RSS before -> after", "server sent", "client received"},
	}
	for _, row := range r.Rows {
		mem.Rows = append(mem.Rows, row.memLine())
		if m := row.Mem; m.Unavailable != "" {
			mem.Notes = append(mem.Notes, fmt.Sprintf("%s unavailable: %s", row.Mode.Name, m.Unavailable))
		}
		if row.Unavailable != "" {
			perf.Rows = append(perf.Rows, []string{row.Mode.Name, "unavailable", "unavailable", "unavailable", "unavailable", "unavailable", "unavailable", "unavailable"})
			perf.Notes = append(perf.Notes, fmt.Sprintf("%s unavailable: %s", row.Mode.Name, row.Unavailable))
			continue
		}
		line := []string{row.Mode.Name}
		for _, n := range streamCounts {
			bps := row.medianBps(n)
			cell := FormatRate(bps)
			if base != nil && base != row && base.medianBps(n) > 0 && !math.IsNaN(bps) {
				cell += fmt.Sprintf(" x%.2f", bps/base.medianBps(n))
			}
			line = append(line, cell)
		}
		for _, n := range streamCounts {
			cpu := row.medianCPU(n)
			if math.IsNaN(cpu) {
				line = append(line, "-")
			} else {
				line = append(line, fmt.Sprintf("%.2f", cpu))
			}
		}
		line = append(line, FormatSeconds(Percentile(row.RTTs, 50)), FormatSeconds(Percentile(row.RTTs, 99)))
		shares := "-"
		if a, b := row.medianShare(1), row.medianShare(8); row.Mode.Relay == "sockmap" && (!math.IsNaN(a) || !math.IsNaN(b)) {
			shares = formatShare(a) + " / " + formatShare(b)
		}
		line = append(line, shares)
		perf.Rows = append(perf.Rows, line)
		for _, e := range row.Errors {
			perf.Notes = append(perf.Notes, fmt.Sprintf("%s: %s", row.Mode.Name, e))
		}
	}
	perf.Notes = append(perf.Notes,
		"throughput: downloads from the server, all streams added; xN is relative to no proxy",
		"CPU s/GB: non-idle time of the whole machine (user, system, softirq, kernel workers; traffic generator included) from /proc/stat, per 10^9 payload bytes",
		"RR: one connection, one 64-byte message echoed at a time, round trip seen by the client; percentiles over all repetitions",
		"moved in kernel: of the bytes the sockmap relay carried, the part the sk_skb verdict redirected; the rest it left to userspace (budget full, then order), from `pepsal status --json`")
	mem.Notes = append(mem.Notes,
		"growth from just before the connection to its end. MemTotal-MemAvailable and Slab are machine-wide (/proc/meminfo): on a VM they move by tens of MB on their own "+
			"(page reclaim, ballooning), so only large growth means something. TCP buffers is the sockstat TCP mem (socket queues only, not a sockmap backlog). "+
			"'server sent - client received' is what waits in buffers on the way: the steadiest measure")
	if r.MemDuration == 0 {
		return []Table{perf}
	}
	return []Table{perf, mem}
}

func formatShare(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*x)
}

// freeGarbage returns this process's garbage to the kernel, so that the
// machine-wide counters do not see the Go heap breathing.
func freeGarbage() {
	runtime.GC()
	debug.FreeOSMemory()
}

// settledMem samples /proc/meminfo once it has stopped moving: namespaces of
// the previous test bed are freed asynchronously (seconds after they are
// deleted, by hundreds of MB), and a daemon that just started still grows.
func settledMem(ctx context.Context) (Mem, error) {
	const (
		step      = 500 * time.Millisecond
		maxWait   = 30 * time.Second
		tolerance = 512 << 10
		calm      = 4 // consecutive steps within tolerance
	)
	freeGarbage()
	prev, err := ReadMem()
	if err != nil {
		return prev, err
	}
	still := 0
	for deadline := time.Now().Add(maxWait); time.Now().Before(deadline) && still < calm; {
		select {
		case <-ctx.Done():
			return prev, ctx.Err()
		case <-time.After(step):
		}
		freeGarbage()
		cur, err := ReadMem()
		if err != nil {
			return cur, err
		}
		if d := cur.Used - prev.Used; d < tolerance && d > -tolerance {
			still++
		} else {
			still = 0
		}
		prev = cur
	}
	return prev, nil
}

func (row *EffRow) memLine() []string {
	m := row.Mem
	if m.Unavailable != "" {
		return []string{row.Mode.Name, "unavailable", "unavailable", "unavailable", "unavailable", "unavailable", "unavailable"}
	}
	rssCell := "-"
	if m.RSSBefore >= 0 && m.RSSAfter >= 0 {
		rssCell = FormatBytes(m.RSSBefore) + " -> " + FormatBytes(m.RSSAfter)
	}
	return []string{row.Mode.Name, FormatBytes(m.Used), FormatBytes(m.Slab), FormatBytes(m.TCPMem), rssCell, FormatBytes(m.Sent), FormatBytes(m.Received)}
}
