// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
)

// Transfer is one measured exchange of a run.
type Transfer struct {
	Label string
	Size  int64
	Up    bool // client to server
}

// SatTransfers are the columns of the satellite tables; the first download
// also gives the time to first byte.
var SatTransfers = []Transfer{
	{"100 KB", 100e3, false},
	{"1 MB", 1e6, false},
	{"10 MB", 10e6, false},
	{"10 MB up", 10e6, true},
}

// FirstByte is the column of the time to first byte.
const FirstByte = "first byte"

// Spec is one table: a link profile on a topology.
type Spec struct {
	Profile   string // linkemu profile; "" or "none": no emulation
	Topo      Topo
	Transfers []Transfer
	Modes     []Mode // the rows; nil: cfg.Modes()
}

func (s Spec) link() (*linkemu.Link, error) {
	if s.Profile == "" || s.Profile == "none" {
		return nil, nil
	}
	l, err := linkemu.Profile(s.Profile)
	if err != nil {
		return nil, err
	}
	return &l, nil
}

func (s Spec) profileName() string {
	if s.Profile == "" || s.Profile == "none" {
		return "no emulation"
	}
	return s.Profile
}

func (s Spec) String() string { return s.profileName() + "/" + string(s.Topo) }

// Row is what one mode measured for a spec.
type Row struct {
	Mode        Mode
	Unavailable string               // the proxy did not start: its one-line error
	Samples     map[string][]float64 // seconds per column; +Inf for a time-out
	Errors      map[string][]string  // failed transfers per column (not time-outs)
	Bytes       int64                // payload moved and verified
	Attempted   int                  // transfers tried
	Connections int                  // connections opened, warm-up included
	Split       map[string]uint64    // connections each pepsal site accepted
	Warm        uint64               // of those, flows the terminal sent over a warm path
	MaxLate     time.Duration        // worst lateness of the link emulator during the runs, if above the one before
	KernelDrops uint64               // frames the emulator's sockets lost
}

// SpecResult is one table's data.
type SpecResult struct {
	Spec    Spec
	Runs    int
	Timeout time.Duration
	Rows    []*Row
	Elapsed time.Duration
}

// bedRun is one mode of a spec: its own namespaces, server and proxies.
type bedRun struct {
	row     *Row
	bed     *Bed
	daemons []*Daemon
}

// RunSpec measures every mode of cfg on spec. All modes get identical test
// beds measured at the same time, so each run compares them under the same
// machine load; runs are sequential. A mode whose proxy does not start is
// reported as unavailable. Everything is torn down before it returns.
func RunSpec(ctx context.Context, cfg Config, spec Spec, prefix string, log *slog.Logger) (*SpecResult, error) {
	p, err := prepareSpec(ctx, cfg, spec, prefix, log)
	if err != nil {
		return p.res, err
	}
	err = p.measure(ctx, cfg, log)
	return p.res, errors.Join(err, p.close())
}

// preparedSpec is a spec whose test beds are built and warm.
type preparedSpec struct {
	spec  Spec
	res   *SpecResult
	beds  []*bedRun
	start time.Time
}

// prepareSpec builds one test bed per mode and starts its proxies. On error
// what was built is already torn down.
func prepareSpec(ctx context.Context, cfg Config, spec Spec, prefix string, log *slog.Logger) (p *preparedSpec, err error) {
	p = &preparedSpec{spec: spec, start: time.Now(), res: &SpecResult{Spec: spec, Runs: cfg.Runs, Timeout: cfg.Timeout}}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	link, err := spec.link()
	if err != nil {
		return p, err
	}
	for i, m := range spec.modes(cfg) {
		row := &Row{Mode: m, Samples: map[string][]float64{}, Errors: map[string][]string{}}
		p.res.Rows = append(p.res.Rows, row)
		bed, err := NewBed(spec.Topo, link, fmt.Sprintf("%s%d", prefix, i), cfg.ServerCC)
		if err != nil {
			return p, err
		}
		ds, err := StartProxies(ctx, cfg, m, bed.Sites)
		if err != nil {
			bed.Close()
			if ctx.Err() != nil {
				return p, ctx.Err()
			}
			row.Unavailable = err.Error()
			log.Warn("mode unavailable", "spec", spec.String(), "mode", m.Name, "err", err)
			continue
		}
		p.beds = append(p.beds, &bedRun{row: row, bed: bed, daemons: ds})
	}
	// One small exchange per bed: neighbour resolution over the link costs a
	// round trip that belongs to no transfer.
	var wg sync.WaitGroup
	for _, b := range p.beds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			b.row.Connections++
			if _, err := Download(wctx, b.bed.Client, b.bed.Server.Addr, 1000); err != nil && ctx.Err() == nil {
				log.Warn("warm-up failed", "spec", spec.String(), "mode", b.row.Mode.Name, "err", err)
			}
		}()
	}
	wg.Wait()
	return p, ctx.Err()
}

// measure does the runs, then reads the proxies' and the emulator's counters.
func (p *preparedSpec) measure(ctx context.Context, cfg Config, log *slog.Logger) error {
	// The emulator's lateness is a running maximum; what it reached while
	// test beds were being built is not the measurements' concern.
	lateBefore := make([]time.Duration, len(p.beds))
	for i, b := range p.beds {
		if st, ok := b.bed.LinkStats(); ok {
			lateBefore[i] = max(st.Down.MaxLate, st.Up.MaxLate)
		}
	}
	var wg sync.WaitGroup
	for run := range cfg.Runs {
		log.Info("run", "spec", p.spec.String(), "run", fmt.Sprintf("%d/%d", run+1, cfg.Runs))
		for _, b := range p.beds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.runOnce(ctx, p.spec.Transfers, cfg.Timeout)
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	for i, b := range p.beds {
		if st, ok := b.bed.LinkStats(); ok {
			if late := max(st.Down.MaxLate, st.Up.MaxLate); late > lateBefore[i] {
				b.row.MaxLate = late
			}
			log.Debug("link emulator", "spec", p.spec.String(), "mode", b.row.Mode.Name, "late_before", lateBefore[i], "down", st.Down, "up", st.Up)
			b.row.KernelDrops = st.Down.KernelDrops + st.Up.KernelDrops
		}
		for _, d := range b.daemons {
			if d.ref {
				continue
			}
			if b.row.Split == nil {
				b.row.Split = map[string]uint64{}
			}
			if st, err := d.Status(); err == nil && st.Daemon != nil {
				b.row.Split[d.Site.Name] = st.Daemon.Stats.Accepted
				if p := st.Daemon.Peer; p != nil && p.Pool != nil {
					b.row.Warm += p.Pool.Taken
				}
			}
		}
	}
	p.res.Elapsed = time.Since(p.start)
	return nil
}

// close stops the proxies and deletes the test beds.
func (p *preparedSpec) close() error {
	var errs []error
	for _, b := range p.beds {
		StopAll(b.daemons)
		errs = append(errs, b.bed.Close())
	}
	p.beds = nil
	return errors.Join(errs...)
}

// runOnce does each transfer of a run in turn.
func (b *bedRun) runOnce(ctx context.Context, transfers []Transfer, timeout time.Duration) {
	firstDown := true
	for _, tr := range transfers {
		if ctx.Err() != nil {
			return
		}
		tctx, cancel := context.WithTimeout(ctx, timeout)
		var (
			r   Result
			err error
		)
		if tr.Up {
			r, err = Upload(tctx, b.bed.Client, b.bed.Server.Addr, tr.Size)
		} else {
			r, err = Download(tctx, b.bed.Client, b.bed.Server.Addr, tr.Size)
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		b.row.Attempted++
		b.row.Connections++
		timedOut := errors.Is(err, context.DeadlineExceeded)
		switch {
		case err == nil:
			b.row.Samples[tr.Label] = append(b.row.Samples[tr.Label], r.Total.Seconds())
			b.row.Bytes += r.Bytes
		case timedOut:
			b.row.Samples[tr.Label] = append(b.row.Samples[tr.Label], math.Inf(1))
		default:
			b.row.Errors[tr.Label] = append(b.row.Errors[tr.Label], err.Error())
		}
		if !tr.Up && firstDown {
			firstDown = false
			if r.FirstByte > 0 {
				b.row.Samples[FirstByte] = append(b.row.Samples[FirstByte], r.FirstByte.Seconds())
			} else if timedOut {
				b.row.Samples[FirstByte] = append(b.row.Samples[FirstByte], math.Inf(1))
			}
		}
	}
}

// columns of a spec's table, after the mode.
func (s Spec) columns() []string {
	var cols []string
	hasDown := false
	for _, t := range s.Transfers {
		cols = append(cols, t.Label)
		hasDown = hasDown || !t.Up
	}
	if hasDown {
		cols = append(cols, FirstByte)
	}
	return cols
}

// Table renders medians with the speed-up over "no proxy" of the same run.
func (r *SpecResult) Table() Table {
	cols := r.Spec.columns()
	t := Table{
		Title:  fmt.Sprintf("### %s, %s (%s)", r.Spec.profileName(), r.Spec.Topo, medianOf(r.Runs)),
		Header: append([]string{"mode"}, cols...),
	}
	if l, err := r.Spec.link(); err == nil && l != nil {
		t.Title += "\n\n" + DescribeLink(*l) + ", " + topoPicture(r.Spec.Topo)
	} else {
		t.Title += "\n\n" + topoPicture(r.Spec.Topo)
	}
	var base *Row
	for _, row := range r.Rows {
		if !row.Mode.Proxied() && row.Unavailable == "" {
			base = row
		}
	}
	limit := r.Timeout.Seconds()
	timeouts := false
	for _, row := range r.Rows {
		line := []string{row.Mode.Name}
		if row.Unavailable != "" {
			for range cols {
				line = append(line, "unavailable")
			}
			t.Rows = append(t.Rows, line)
			t.Notes = append(t.Notes, fmt.Sprintf("%s unavailable: %s", row.Mode.Name, row.Unavailable))
			continue
		}
		for _, c := range cols {
			m := Median(row.Samples[c])
			cell := FormatSeconds(m)
			if math.IsInf(m, 1) {
				cell = "> " + FormatSeconds(limit)
			}
			for _, s := range row.Samples[c] {
				timeouts = timeouts || math.IsInf(s, 1)
			}
			if base != nil && row != base {
				if sp := FormatSpeedup(Median(base.Samples[c]), m, limit); sp != "" {
					cell += " " + sp
				}
			}
			if n := len(row.Errors[c]); n > 0 {
				cell += fmt.Sprintf(" (%d failed)", n)
				t.Notes = append(t.Notes, fmt.Sprintf("%s, %s: %d of %d failed, e.g. %s",
					row.Mode.Name, c, n, n+len(row.Samples[c]), row.Errors[c][0]))
			}
			line = append(line, cell)
		}
		t.Rows = append(t.Rows, line)
		for _, site := range slices.Sorted(maps.Keys(row.Split)) {
			if n := row.Split[site]; n < uint64(row.Connections) {
				t.Notes = append(t.Notes, fmt.Sprintf("%s: pepsal at the %s split only %d of %d connections", row.Mode.Name, site, n, row.Connections))
			}
		}
		if strings.HasSuffix(row.Mode.Name, warmLabel) && row.Split != nil && row.Warm < uint64(row.Connections) {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %d of %d connections rode a warm path, the others fast open", row.Mode.Name, row.Warm, row.Connections))
		}
	}
	for _, row := range r.Rows {
		if n := latenessNote(row, r.Spec); n != "" {
			t.Notes = append(t.Notes, n)
		}
	}
	if timeouts {
		t.Notes = append(t.Notes, fmt.Sprintf("a transfer still running after %s is stopped and counts as longer than that in the median", r.Timeout))
	}
	return t
}

// RunSatellite measures every spec, up to cfg.Parallel at once (0: all).
// Satellite links leave the CPU mostly idle, so test beds of different specs
// can share the machine without changing what is measured. Building and
// deleting namespaces and starting proxies is not idle, so all test beds are
// built before the first measurement and deleted after the last. The results
// keep the order of specs.
func RunSatellite(ctx context.Context, cfg Config, specs []Spec, log *slog.Logger) (results []*SpecResult, err error) {
	return runSatellite(ctx, cfg, specs, "pb", log)
}

// runSatellite is RunSatellite with the test beds' name prefix.
func runSatellite(ctx context.Context, cfg Config, specs []Spec, prefix string, log *slog.Logger) (results []*SpecResult, err error) {
	results = make([]*SpecResult, len(specs))
	var prepared []*preparedSpec
	defer func() {
		log.Info("removing test beds")
		for _, p := range prepared {
			err = errors.Join(err, p.close())
		}
	}()
	for i, s := range specs {
		log.Info("building test beds", "spec", s.String())
		p, err := prepareSpec(ctx, cfg, s, fmt.Sprintf("%s%dm", prefix, i), log)
		results[i] = p.res
		if err != nil {
			return results, err
		}
		prepared = append(prepared, p)
	}
	errs := make([]error, len(prepared))
	par := cfg.Parallel
	if par <= 0 {
		par = len(prepared)
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, p := range prepared {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			p.start = time.Now() // Elapsed counts the measurements only
			if errs[i] = p.measure(ctx, cfg, log); errs[i] == nil {
				log.Info("done", "spec", p.spec.String(), "elapsed", p.res.Elapsed.Round(time.Second))
			}
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// SatSpecs lists the tables cfg asks for: the gateway-PEP topology for each
// profile, then the two-PEP one for the profiles in both lists.
func SatSpecs(cfg Config) []Spec {
	var specs []Spec
	for _, p := range cfg.Profiles {
		specs = append(specs, Spec{Profile: p, Topo: Gateway, Transfers: SatTransfers})
	}
	for _, p := range cfg.Profiles {
		for _, q := range cfg.TwoPEPProfiles {
			if p == q {
				specs = append(specs, Spec{Profile: p, Topo: TwoPEP, Transfers: SatTransfers})
			}
		}
	}
	return specs
}

func medianOf(runs int) string {
	if runs == 1 {
		return "1 run"
	}
	return fmt.Sprintf("median of %d runs", runs)
}
