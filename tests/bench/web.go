// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// WebProtos are the columns of the page-load tables: the document's URL and
// the protocol every request must have used.
var WebProtos = []struct{ Label, File, Proto string }{
	{"HTTP/1.1", "h1.html", "http/1.1"},
	{"HTTPS, HTTP/2", "h2.html", "h2"},
}

// webKind is how a row relays TCP.
type webKind int

const (
	webNone   webKind = iota
	webPepsal         // pepsal --role gateway on the router
	webTwo            // pepsal --role terminal + --role gateway
	webRef            // PEPsal 2.0.2 on the router
	webQPEP           // QPEP client on the terminal, server on the gateway
)

// WebMode is one row of a page-load table.
type WebMode struct {
	Name string
	Kind webKind
}

// WebModes are the rows; relay is pepsal's relay mode, warm whether the two
// pepsals run warm paths (their row says so).
func WebModes(relay string, warm bool) []WebMode {
	two := "pepsal " + relay + ", terminal + gateway"
	if warm {
		two += warmLabel
	}
	return []WebMode{
		{"no proxy", webNone},
		{"pepsal " + relay + ", gateway", webPepsal},
		{two, webTwo},
		{"PEPsal 2.0.2, gateway", webRef},
		{"QPEP 0.7.1, terminal + gateway", webQPEP},
	}
}

func (m WebMode) topo() Topo {
	if m.Kind == webTwo || m.Kind == webQPEP {
		return TwoPEP
	}
	return Gateway
}

// WebRow is what a mode measured on one profile.
type WebRow struct {
	Mode        WebMode
	Unavailable string
	Load, TTFB  map[string][]float64 // seconds per protocol label; +Inf for a time-out
	Errors      map[string][]string
	Split       map[string]uint64 // connections each pepsal site accepted
	Warm        uint64            // flows the terminal sent over a warm path
	MaxLate     time.Duration
	KernelDrops uint64
	KeepFailed  int64 // QPEP keep-alive requests that failed
}

// WebTable is one profile's rows.
type WebTable struct {
	Profile string
	Runs    int
	Timeout time.Duration
	Rows    []*WebRow
}

// WebResult is the page-load part of a run.
type WebResult struct {
	Browser, Nginx string
	Relay          string
	Warm           bool // the two pepsals ran warm paths
	Tables         []*WebTable
	Page           *Page
}

// webBed is a test bed with nginx serving the page on three addresses.
type webBed struct {
	row           *WebRow
	mode          WebMode
	client        *testbed.NS
	addrs         []string
	traffic       *Server // for warm-up and QPEP's keep-alive
	nginx         *Daemon
	daemons       []*Daemon
	bridge        *linkemu.Bridge
	dir           string
	closeTop      func() error
	stopKeep      func()
	keepFailed    atomic.Int64 // keep-alive requests that failed
	sitesForStart []Site       // where the mode's PEPs run, gateway first
}

// newWebBed builds the topology of mode with the emulated link, adds the two
// extra origin addresses to the server, starts the traffic server and nginx.
func newWebBed(ctx context.Context, mode WebMode, link linkemu.Link, prefix string, page *Page, cc string) (b *webBed, err error) {
	b = &webBed{mode: mode}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.dir, err = os.MkdirTemp("", "pepsal-web-"); err != nil {
		return b, err
	}
	opt := testbed.Options{Prefix: prefix, Middle: func(ns *testbed.NS, c, r string) (io.Closer, error) {
		br, err := linkemu.Start(ns, c, r, link)
		b.bridge = br
		return br, err
	}}
	var (
		server *testbed.NS
		base   string
		sites  []Site
	)
	if mode.topo() == TwoPEP {
		t, err := testbed.NewTwoPEP(opt)
		if err != nil {
			return b, fmt.Errorf("two-PEP test bed: %w", err)
		}
		b.closeTop, b.client, server, base = t.Close, t.Client, t.Server, testbed.TPServerV4
		sites = []Site{
			{Name: "gateway", NS: t.Gateway, Iface: testbed.GatewayLinkIf},
			{Name: "terminal", NS: t.Terminal, Iface: testbed.TerminalClientIf},
		}
	} else {
		t, err := testbed.NewTopology(opt)
		if err != nil {
			return b, fmt.Errorf("gateway test bed: %w", err)
		}
		b.closeTop, b.client, server, base = t.Close, t.Client, t.Server, testbed.ServerV4
		sites = []Site{{Name: "gateway", NS: t.Router, Iface: testbed.RouterClientIf}}
	}
	b.addrs = originAddrs(base)
	for _, a := range b.addrs[1:] {
		if err := server.AddAddr("eth0", a+"/24"); err != nil {
			return b, err
		}
	}
	if cc != "" {
		if err := routeCC(server, cc); err != nil {
			return b, err
		}
	}
	if b.traffic, err = StartServer(server, net.JoinHostPort(base, serverPort), cc); err != nil {
		return b, err
	}
	if err := WriteSite(b.dir, page, b.addrs); err != nil {
		return b, fmt.Errorf("write the page: %w", err)
	}
	if b.nginx, err = StartNginx(ctx, Site{Name: "server", NS: server}, b.dir, b.addrs); err != nil {
		return b, err
	}
	b.sitesForStart = sites
	return b, nil
}

// start runs the mode's PEPs.
func (b *webBed) start(ctx context.Context, cfg Config, peers Peers, relay string) error {
	sites := b.sitesForStart
	args := func(s Site) []string {
		if b.mode.Kind == webTwo {
			return cfg.webTwoArgs(s.Name)
		}
		a, _ := cfg.override(s.Name)
		return append([]string{"--role", "gateway"}, a...)
	}
	switch b.mode.Kind {
	case webPepsal, webTwo:
		for _, s := range sites {
			d, err := StartPepsal(ctx, cfg.Pepsal, s, relay, args(s))
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			b.daemons = append(b.daemons, d)
		}
		return waitWarm(ctx, b.daemons)
	case webRef:
		if peers.PEPsal == "" {
			return errors.New(notRun + peers.PEPsalMissing)
		}
		d, err := StartReference(ctx, peers.PEPsal, sites[0])
		if err != nil {
			return err
		}
		b.daemons = append(b.daemons, d)
	case webQPEP:
		if peers.QPEP == "" {
			return errors.New(notRun + peers.QPEPMissing)
		}
		gw, term := sites[0], sites[1]
		// QPEP panics without a default route where it runs.
		if err := gw.NS.DefaultRoute(testbed.TPServerV4); err != nil {
			return err
		}
		ds, err := StartQPEP(ctx, peers, term, gw, testbed.GatewayLinkV4, b.dir)
		if err != nil {
			return err
		}
		b.daemons = ds
		b.keepAlive(ctx)
	}
	return nil
}

func (b *webBed) close() error {
	if b.stopKeep != nil {
		b.stopKeep()
		b.stopKeep = nil
	}
	StopAll(b.daemons)
	b.daemons = nil
	if b.nginx != nil {
		b.nginx.Stop()
		b.nginx = nil
	}
	if b.traffic != nil {
		b.traffic.Close()
		b.traffic = nil
	}
	var err error
	if b.closeTop != nil {
		err = b.closeTop()
		b.closeTop = nil
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
		b.dir = ""
	}
	return err
}

// webSpec is one profile's test beds, built and warm.
type webSpec struct {
	table *WebTable
	beds  []*webBed
}

func (s *webSpec) close() error {
	var errs []error
	for _, b := range s.beds {
		errs = append(errs, b.close())
	}
	s.beds = nil
	return errors.Join(errs...)
}

// prepareWeb builds a bed per mode and starts its PEPs; a mode whose PEP does
// not start is unavailable, its reason in the table.
func prepareWeb(ctx context.Context, cfg Config, peers Peers, relay, profile string, modes []WebMode, page *Page, prefix string, log *slog.Logger) (*webSpec, error) {
	link, err := linkemu.Profile(profile)
	if err != nil {
		return nil, err
	}
	s := &webSpec{table: &WebTable{Profile: profile, Runs: cfg.Runs, Timeout: cfg.Timeout}}
	for i, m := range modes {
		row := &WebRow{Mode: m, Load: map[string][]float64{}, TTFB: map[string][]float64{}, Errors: map[string][]string{}}
		s.table.Rows = append(s.table.Rows, row)
		b, err := newWebBed(ctx, m, link, fmt.Sprintf("%s%d", prefix, i), page, cfg.ServerCC)
		if err != nil {
			return s, errors.Join(err, s.close())
		}
		b.row = row
		if err := b.start(ctx, cfg, peers, relay); err != nil {
			b.close()
			if ctx.Err() != nil {
				return s, errors.Join(ctx.Err(), s.close())
			}
			row.Unavailable = err.Error()
			log.Warn("mode unavailable", "profile", profile, "mode", m.Name, "err", err)
			continue
		}
		s.beds = append(s.beds, b)
	}
	// Neighbour resolution over the link belongs to no page load.
	for _, b := range s.beds {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := Download(wctx, b.client, b.traffic.Addr, 1000); err != nil && ctx.Err() == nil {
			log.Warn("warm-up failed", "profile", profile, "mode", b.mode.Name, "err", err)
		}
		cancel()
	}
	return s, ctx.Err()
}

// measure loads the page cfg.Runs times per protocol in every bed, one load
// at a time (browsers competing for two CPUs would slow each other), modes
// in a rotating order so that none always goes first.
func (s *webSpec) measure(ctx context.Context, cfg Config, browser string, page *Page, log *slog.Logger) error {
	lateBefore := make([]time.Duration, len(s.beds))
	for i, b := range s.beds {
		st := b.bridge.Stats()
		lateBefore[i] = max(st.Down.MaxLate, st.Up.MaxLate)
	}
	for run := range cfg.Runs {
		log.Info("page loads", "profile", s.table.Profile, "run", fmt.Sprintf("%d/%d", run+1, cfg.Runs))
		for _, p := range WebProtos {
			for k := range s.beds {
				b := s.beds[(k+run)%len(s.beds)]
				url := "http://" + b.addrs[0] + "/" + p.File
				if p.Proto == "h2" {
					url = "https://" + b.addrs[0] + "/" + p.File
				}
				if b.mode.Kind == webQPEP {
					b.warmQPEP(ctx, log)
				}
				t, err := LoadPage(ctx, b.client, browser, url, cfg.Timeout)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err == nil {
					err = t.Check(page, p.Proto)
				}
				switch {
				case err == nil:
					b.row.Load[p.Label] = append(b.row.Load[p.Label], t.Load.Seconds())
					b.row.TTFB[p.Label] = append(b.row.TTFB[p.Label], t.TTFB.Seconds())
				case errors.Is(err, context.DeadlineExceeded):
					b.row.Load[p.Label] = append(b.row.Load[p.Label], math.Inf(1))
				default:
					b.row.Errors[p.Label] = append(b.row.Errors[p.Label], err.Error())
					log.Warn("page load failed", "profile", s.table.Profile, "mode", b.mode.Name, "proto", p.Label, "err", err)
				}
				log.Debug("page load", "profile", s.table.Profile, "mode", b.mode.Name, "proto", p.Label, "load", t.Load, "ttfb", t.TTFB, "err", err)
			}
		}
	}
	for i, b := range s.beds {
		st := b.bridge.Stats()
		if late := max(st.Down.MaxLate, st.Up.MaxLate); late > lateBefore[i] {
			b.row.MaxLate = late
		}
		b.row.KernelDrops = st.Down.KernelDrops + st.Up.KernelDrops
		b.row.KeepFailed = b.keepFailed.Load()
		for _, d := range b.daemons {
			if d.ref {
				continue
			}
			if st, err := d.Status(); err == nil && st.Daemon != nil {
				if b.row.Split == nil {
					b.row.Split = map[string]uint64{}
				}
				b.row.Split[d.Site.Name] = st.Daemon.Stats.Accepted
				if p := st.Daemon.Peer; p != nil && p.Pool != nil {
					b.row.Warm += p.Pool.Taken
				}
			}
		}
	}
	return nil
}

// RunWeb measures page loads on every profile of cfg, up to cfg.Parallel
// profiles at once (0: all); within a profile one load at a time.
func RunWeb(ctx context.Context, cfg Config, log *slog.Logger) (res *WebResult, err error) {
	return runWeb(ctx, cfg, cfg.Profiles, nil, log)
}

func runWeb(ctx context.Context, cfg Config, profiles []string, only []webKind, log *slog.Logger) (res *WebResult, err error) {
	browser, version, err := FindBrowser()
	if err != nil {
		return nil, err
	}
	relay := "splice"
	if len(cfg.Relays) > 0 {
		relay = cfg.Relays[0]
	}
	warm := hasWarmPaths(cfg.webTwoArgs("terminal"))
	res = &WebResult{Browser: version, Nginx: NginxVersion(), Relay: relay, Page: GeneratePage(), Warm: warm}
	var modes []WebMode
	for _, m := range WebModes(relay, warm) {
		if only == nil || slices.Contains(only, m.Kind) {
			modes = append(modes, m)
		}
	}
	var peers Peers
	if only == nil || slices.Contains(only, webRef) || slices.Contains(only, webQPEP) {
		peers = EnsurePeers(ctx, cfg, os.Getenv, log)
	}
	var specs []*webSpec
	defer func() {
		log.Info("removing page-load test beds")
		for _, s := range specs {
			err = errors.Join(err, s.close())
		}
	}()
	for i, p := range profiles {
		log.Info("building page-load test beds", "profile", p)
		s, err := prepareWeb(ctx, cfg, peers, relay, p, modes, res.Page, fmt.Sprintf("pw%dm", i), log)
		if s != nil {
			specs = append(specs, s)
			res.Tables = append(res.Tables, s.table)
		}
		if err != nil {
			return res, err
		}
	}
	par := cfg.Parallel
	if par <= 0 {
		par = len(specs)
	}
	sem := make(chan struct{}, par)
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
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
			errs[i] = s.measure(ctx, cfg, browser, res.Page, log)
		}()
	}
	wg.Wait()
	return res, errors.Join(errs...)
}
