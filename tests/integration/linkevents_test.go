// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// recreations is how many times TestInterfaceRecreated deletes and creates
// the router's client-side interface again.
const recreations = 20

// TestInterfaceRecreated: the router's client-side interface is deleted and
// created again (a new veth pair, new ifindexes, addresses and routes
// added back) 20 times under live traffic. After each return new
// connections are split again; a connection forwarded unsplit across that
// interface and one to the router on the other interface keep working; the
// status and the metrics say what happened; nothing is left behind.
func TestInterfaceRecreated(t *testing.T) {
	for _, mode := range []string{"auto", "clsact"} {
		t.Run("tc-mode="+mode, func(t *testing.T) { testInterfaceRecreated(t, mode) })
	}
}

func testInterfaceRecreated(t *testing.T, tcMode string) {
	b := newBed(t, defaultSuite())
	before := netState(t, b.Router)
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}
	// Forwarded unsplit: established before the daemon, it has no local
	// socket on the router, and crosses the interface that is recreated.
	forwarded := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
	if line := readLineWithin(t, forwarded, 10*time.Second); line != testbed.ClientV4 {
		t.Fatalf("before the daemon the server saw %s, want the client", line)
	}
	// On the other interface: a service of the router itself.
	serve(t, b.Router, hostPort(testbed.RouterServerV4, 9100), func(c *net.TCPConn) { io.Copy(c, c) })
	other := mustDial(t, b.Server, hostPort(testbed.RouterServerV4, 9100))

	d := b.startPepsal("--iface", testbed.RouterClientIf, "--tc-mode", tcMode, "--metrics-addr", metricsAddr)
	churn := startChurn(t, b.Client, hostPort(testbed.ServerV4, 8080))

	// The first loss, seen before the interface comes back.
	if err := b.DeleteClientLink(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the daemon sees the interface gone", func() bool {
		h := followedIn(t, b.Router)
		return len(h) == 1 && !h[0].Attached && h[0].Losses == 1
	})
	fams := scrapeMetrics(t, b.Router)
	if v := metricValue(t, fams, "pepsal_interface_attached", "iface", testbed.RouterClientIf); v != 0 {
		t.Errorf("pepsal_interface_attached = %v while the interface is gone, want 0", v)
	}
	st, r := statusExit(t, b.Router)
	if r.code == 0 || st.Serving || !strings.Contains(strings.Join(st.Problems, "\n"), "no longer exists") {
		t.Errorf("status while the interface is gone: exit %d, serving %v, problems %q", r.code, st.Serving, st.Problems)
	}
	if text := b.pepsal("status").stdout; !strings.Contains(text, "follows:   "+testbed.RouterClientIf+" NOT ATTACHED") {
		t.Errorf("status text while the interface is gone:\n%s", text)
	}
	if err := b.AddClientLink(); err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	took = append(took, waitSplitAgain(t, b))
	for i := 1; i < recreations; i++ {
		if err := b.RecreateClientLink(); err != nil {
			t.Fatalf("recreation %d: %v", i+1, err)
		}
		took = append(took, waitSplitAgain(t, b))
		churn.waitSplits(t, fmt.Sprintf("live traffic after recreation %d", i+1))
		echoWithin(t, forwarded, fmt.Sprintf("forwarded connection after recreation %d", i+1))
		echoWithin(t, other, fmt.Sprintf("connection on %s after recreation %d", testbed.RouterServerIf, i+1))
	}
	split, unsplit, failed := churn.stop()
	slices.Sort(took)
	t.Logf("tc-mode %s: new connections split again %v (median %v, max %v) after the interface's return; churn: %d split, %d unsplit, %d failed",
		tcMode, took, took[len(took)/2], took[len(took)-1], split, unsplit, failed)
	if split == 0 {
		t.Errorf("no connection of the live traffic was split")
	}
	checkRecreatedState(t, b, tcMode)
	// The log says each loss and each return.
	for _, line := range []string{`msg="interface lost`, `msg="interface back: classifier re-attached"`} {
		if n := strings.Count(d.Output(), line); n != recreations {
			t.Errorf("%d log lines %s, want %d", n, line, recreations)
		}
	}
	if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Sorted: the recreated interface is listed after the others now.
	if after := sortedLines(netState(t, b.Router)); after != sortedLines(before) {
		t.Errorf("state after SIGTERM differs from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// checkRecreatedState: after the recreations the status, the metrics and
// the kernel show one attachment, on the interface there is now.
func checkRecreatedState(t *testing.T, b *bed, tcMode string) {
	t.Helper()
	st, r := statusExit(t, b.Router)
	if r.code != 0 || len(st.Problems) > 0 {
		t.Errorf("status after the recreations: exit %d, problems %q", r.code, st.Problems)
	}
	h := st.Daemon.Interfaces
	if len(h) != 1 || !h[0].Attached || h[0].Losses != recreations || h[0].Reattached != recreations {
		t.Errorf("followed interfaces %+v: want %s attached, %d losses, %d re-attachments", h, testbed.RouterClientIf, recreations, recreations)
	}
	ifc := ifaceIndex(t, b.Router, testbed.RouterClientIf)
	if len(st.Ifaces) != 1 || st.Ifaces[0].Index != ifc || st.Ifaces[0].Name != testbed.RouterClientIf {
		t.Errorf("pepsal_ifaces %+v: want only %s (ifindex %d)", st.Ifaces, testbed.RouterClientIf, ifc)
	}
	fams := scrapeMetrics(t, b.Router)
	for name, want := range map[string]float64{"pepsal_interface_attached": 1, "pepsal_interface_losses_total": recreations, "pepsal_interface_reattached_total": recreations} {
		if v := metricValue(t, fams, name, "iface", testbed.RouterClientIf); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	// One tc attachment: a tcx link (pinned) or a clsact filter, not one
	// per interface that was.
	wantLinks, wantFilters := 1, 0
	var un *loader.Unsupported
	if tcMode == "clsact" || errors.As(loader.ProbeTCX(), &un) { // auto falls back to clsact without tcx (before 6.6)
		wantLinks, wantFilters = 0, 1
	}
	pinned, _ := filepath.Glob(filepath.Join(pinDirFor(nsInode(t, b.Router)), "link_classify_if*"))
	if n := classifierLinks(t, st.Programs["pepsal_classify"]); len(pinned) != wantLinks || n != wantLinks {
		t.Errorf("tcx links of the classifier: %d, pinned %v; want %d", n, pinned, wantLinks)
	}
	out, err := b.Router.Command("tc", "filter", "show", "dev", testbed.RouterClientIf, "ingress").CombinedOutput()
	if err != nil {
		t.Fatalf("tc filter show: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "handle 0x1 pepsal_classify"); n != wantFilters {
		t.Errorf("%d clsact filters of the classifier, want %d:\n%s", n, wantFilters, out)
	}
}

// classifierLinks counts the BPF links (every namespace's) of program id.
func classifierLinks(t *testing.T, id uint32) int {
	t.Helper()
	out, err := exec.Command("bpftool", "link", "show", "-j").Output()
	if err != nil {
		t.Fatalf("bpftool link show: %v", err)
	}
	var links []struct {
		ProgID uint32 `json:"prog_id"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("bpftool link show -j: %v", err)
	}
	n := 0
	for _, l := range links {
		if l.ProgID == id {
			n++
		}
	}
	return n
}

// waitSplitAgain polls new connections (both families) until the server
// sees the router, and returns how long the IPv4 one took after the
// interface's return: recorded, not asserted (a loaded machine may be slow).
func waitSplitAgain(t *testing.T, b *bed) time.Duration {
	t.Helper()
	start := time.Now()
	var took time.Duration
	for i, f := range families {
		waitFor(t, 30*time.Second, f.name+" connection split after the interface's return", func() bool {
			return seenBy(b.Client, hostPort(f.server, 8080)) == f.routerServer
		})
		if i == 0 {
			took = time.Since(start)
		}
	}
	return took
}

// seenBy dials addr from ns and returns the address the server saw ("" on
// any failure: the caller polls).
func seenBy(ns *testbed.NS, addr string) string {
	c, err := dial(ns, addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := readLine(c)
	if err != nil {
		return ""
	}
	return line
}

// sortedLines is s with its lines sorted.
func sortedLines(s string) string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// readLineWithin reads a line from c within d.
func readLineWithin(t *testing.T, c *net.TCPConn, d time.Duration) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(d))
	line, err := readLine(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return line
}

// echoWithin writes a few bytes on c and reads them back: the connection
// still works (TCP may be retransmitting what the gap lost: generous).
func echoWithin(t *testing.T, c *net.TCPConn, what string) {
	t.Helper()
	msg := []byte("still there")
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("%s: echo %q, %v", what, got, err)
	}
}

// followedIn is what the daemon in ns says of the interfaces it follows.
func followedIn(t *testing.T, ns *testbed.NS) []report.IfaceHealth {
	t.Helper()
	st := statusIn(t, ns)
	if st.Daemon == nil {
		t.Fatalf("no daemon in status: %s", st.DaemonNote)
	}
	return st.Daemon.Interfaces
}

// ifaceIndex is the ifindex of name in ns.
func ifaceIndex(t *testing.T, ns *testbed.NS, name string) int {
	t.Helper()
	var idx int
	if err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifc.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return idx
}

// churn is live traffic: new connections from a client, four at a time,
// counted by what the server saw.
type churn struct {
	cancel                 context.CancelFunc
	wg                     sync.WaitGroup
	split, unsplit, failed atomic.Int64
}

func startChurn(t *testing.T, ns *testbed.NS, addr string) *churn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &churn{cancel: cancel}
	for range 4 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for ctx.Err() == nil {
				switch seenBy(ns, addr) {
				case testbed.RouterServerV4:
					c.split.Add(1)
				case testbed.ClientV4:
					c.unsplit.Add(1)
				default:
					c.failed.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	t.Cleanup(func() { c.stop() })
	return c
}

// waitSplits waits until the live traffic has split two more connections.
func (c *churn) waitSplits(t *testing.T, what string) {
	t.Helper()
	from := c.split.Load()
	waitFor(t, 30*time.Second, what, func() bool { return c.split.Load() >= from+2 })
}

func (c *churn) stop() (split, unsplit, failed int64) {
	c.cancel()
	c.wg.Wait()
	return c.split.Load(), c.unsplit.Load(), c.failed.Load()
}

// TestIfaceWait: `pepsal run --iface X` refuses an interface that does not
// exist (one line, nothing attached); with --iface-wait the daemon starts,
// says it waits (status fails, the metric is 0), and attaches the
// classifier when the interface appears.
func TestIfaceWait(t *testing.T) {
	b := newBed(t, defaultSuite())
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 8080))
	}
	if err := b.DeleteClientLink(); err != nil {
		t.Fatal(err)
	}
	r, timedOut := runBounded(b.Router, 10*time.Second, "run", "--iface", testbed.RouterClientIf)
	if timedOut {
		t.Fatal("run with an interface that does not exist did not stop")
	}
	oneLineError(t, r, "unknown interface")
	if p := pins(t, b.Router); p != "" {
		t.Fatalf("pins after a refused run:\n%s", p)
	}

	p, err := harness.Launch(b.Router, harness.Options{}, pepsalBin, "run", "--log-level", "debug",
		"--iface", testbed.RouterClientIf, "--iface-wait", "--metrics-addr", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(syscall.SIGTERM, 10*time.Second)
		if t.Failed() {
			t.Logf("pepsal output:\n%s", p.Output())
		}
	})
	err = p.WaitReady(t.Context(), harness.StartTimeout, func() bool {
		st, _ := statusExit(t, b.Router)
		return st.Daemon != nil && len(st.Daemon.Interfaces) == 1
	})
	if err != nil {
		t.Fatal(err)
	}
	st, r := statusExit(t, b.Router)
	if h := st.Daemon.Interfaces[0]; h.Attached || h.Ifindex != 0 || r.code == 0 ||
		!strings.Contains(strings.Join(st.Problems, "\n"), "does not exist yet") {
		t.Errorf("waiting: interface %+v, exit %d, problems %q", h, r.code, st.Problems)
	}
	if v := metricValue(t, scrapeMetrics(t, b.Router), "pepsal_interface_attached", "iface", testbed.RouterClientIf); v != 0 {
		t.Errorf("pepsal_interface_attached = %v while waiting, want 0", v)
	}

	if err := b.AddClientLink(); err != nil {
		t.Fatal(err)
	}
	t.Logf("split after the interface appeared: %v", waitSplitAgain(t, b))
	st, r = statusExit(t, b.Router)
	if h := st.Daemon.Interfaces; r.code != 0 || len(h) != 1 || !h[0].Attached || h[0].Losses != 0 || h[0].Reattached != 0 {
		t.Errorf("after the interface appeared: exit %d, interfaces %+v, problems %q", r.code, h, st.Problems)
	}
	if v := metricValue(t, scrapeMetrics(t, b.Router), "pepsal_interface_attached", "iface", testbed.RouterClientIf); v != 1 {
		t.Errorf("pepsal_interface_attached = %v once attached, want 1", v)
	}
	if err := p.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if left := pins(t, b.Router); left != "" {
		t.Errorf("pins after SIGTERM:\n%s", left)
	}
}
