// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	dto "github.com/prometheus/client_model/go"
)

// TestLiveBytes: pepsal_relayed_bytes_total grows while a long download
// lives, not only when it ends, in both relays; in the kernel relay the
// kernel's share grows with it.
func TestLiveBytes(t *testing.T) {
	for _, relay := range []string{"splice", "sockmap"} {
		t.Run(relay, func(t *testing.T) { testLiveBytes(t, defaultSuite().inRelay(relay)) })
	}
}

func testLiveBytes(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	// The server streams until the client goes: a download that outlives
	// every scrape of the test.
	serve(t, b.Server, hostPort(testbed.ServerV4, 8080), func(c *net.TCPConn) {
		chunk := bytes.Repeat([]byte{'d'}, 16<<10)
		for {
			_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	b.startPepsal("--iface", testbed.RouterClientIf, "--metrics-addr", metricsAddr)
	c := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
	defer c.Close()
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, c)
		done <- n
	}()

	toClient := func(fams map[string]*dto.MetricFamily, mover string) float64 {
		return metricValue(t, fams, "pepsal_relayed_bytes_total", "direction", "to_client", "mover", mover)
	}
	// Three scrapes with the connection live, each above the one before
	// by at least a chunk: counted as it flows.
	var last, lastKernel float64
	for i := 0; i < 3; i++ {
		deadline := time.Now().Add(30 * time.Second)
		for {
			fams := scrapeMetrics(t, b.Router)
			if active := metricValue(t, fams, "pepsal_connections_active"); active != 1 {
				t.Fatalf("scrape %d: %v connections active, want the download's", i, active)
			}
			k := toClient(fams, "kernel")
			total := k + toClient(fams, "userspace")
			if total < last || k < lastKernel {
				t.Fatalf("scrape %d: counter went down: %v (kernel %v) after %v (kernel %v)", i, total, k, last, lastKernel)
			}
			if total >= last+16<<10 {
				last, lastKernel = total, k
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("scrape %d: %v bytes to the client, no more than %v before, while the download lives", i, total, last)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if cfg.relayInUse(t) == "sockmap" && lastKernel == 0 {
		t.Errorf("kernel relay: no byte counted as the kernel's while live (%v in all)", last)
	}
	select {
	case n := <-done:
		t.Fatalf("download ended early, after %d bytes", n)
	default:
	}
	c.Close()
	<-done
	// Closed, the connection's bytes stay counted.
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := scrapeMetrics(t, b.Router)
		total := toClient(fams, "kernel") + toClient(fams, "userspace")
		if total < last {
			t.Fatalf("after close: %v bytes to the client, %v while live", total, last)
		}
		if metricValue(t, fams, "pepsal_connections_active") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection still active 10 s after the client closed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// explained is `pepsal explain --json` as the tests read it.
type explained struct {
	Split        bool   `json:"split"`
	Counter      string `json:"counter"`
	DeniedReason string `json:"denied_reason"`
	Why          string `json:"why"`
}

// deniedV6 is a second address of the test bed's server, in --deny.
const deniedV6 = "fd77:2::3"

// TestExplainMatchesClassifier: for a flow that is split, one excluded,
// one to a port not wanted, one to the router itself and one the daemon's
// --deny refuses, `pepsal explain` says what the classifier then does with
// the flow's SYN: the counter it names is the one that moves, and no other
// SYN decision does; the refused one is counted by the daemon as explain
// says. `pepsal status` shows the ports and exclusions it read.
func TestExplainMatchesClassifier(t *testing.T) {
	b := newBed(t, defaultSuite())
	if err := b.Server.AddAddr("eth0", deniedV6+"/64"); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{hostPort(testbed.ServerV6, 8080), hostPort(testbed.ServerV6, 9090), hostPort(testbed.ServerV4, 8080), hostPort(deniedV6, 8080)} {
		peerServer(t, b.Server, addr)
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--ports", "8080", "--exclude", testbed.ServerV4+"/32", "--deny", deniedV6+"/128")
	text := b.pepsal("status")
	for _, want := range []string{"\nports:     8080\n", "\nexclude:   " + testbed.ServerV4 + "/32\n", "\nrole:      auto\npreset:    client leg: bbr if its handshake RTT is 150ms or more", "\ndeny:      " + deniedV6 + "/128\n"} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("status text lacks %q:\n%s", want, text.stdout)
		}
	}
	for _, c := range []struct {
		name, src, dst string
		split          bool
		counter        string
		denied         string
	}{
		{"split", testbed.ClientV6, hostPort(testbed.ServerV6, 8080), true, "syn_diverted", ""},
		{"port not wanted", testbed.ClientV6, hostPort(testbed.ServerV6, 9090), false, "syn_bypass_port", ""},
		{"excluded", testbed.ClientV4, hostPort(testbed.ServerV4, 8080), false, "syn_bypass_excluded", ""},
		{"router itself", testbed.ClientV4, hostPort(testbed.RouterServerV4, 8080), false, "syn_bypass_local", ""},
		{"denied by the daemon", testbed.ClientV6, hostPort(deniedV6, 8080), false, "syn_diverted", "deny_prefix"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := b.pepsal("explain", "--json", c.src, c.dst)
			var v explained
			if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || r.code != 0 {
				t.Fatalf("explain: exit %d, %v: %s%s", r.code, err, r.stdout, r.stderr)
			}
			if v.Split != c.split || v.Counter != c.counter || v.DeniedReason != c.denied {
				t.Fatalf("explain says split %v by %s, denied %q (%s), want split %v by %s, denied %q",
					v.Split, v.Counter, v.DeniedReason, v.Why, c.split, c.counter, c.denied)
			}
			st := b.daemonStatus()
			before, deniedBefore := synCounters(st), st.Daemon.Stats.DestDeniedByReason[c.denied]
			if conn, err := dial(b.Client, c.dst, 5*time.Second); err == nil {
				conn.Close() // the router's own address refuses: the SYN was classified all the same
			}
			st = b.daemonStatus()
			after := synCounters(st)
			if c.denied != "" && st.Daemon.Stats.DestDeniedByReason[c.denied] == deniedBefore {
				t.Errorf("the daemon counted no %s refusal", c.denied)
			}
			for name, v := range after {
				moved := v - before[name]
				switch {
				case name == c.counter && moved == 0:
					t.Errorf("%s did not move: explain named the wrong counter", name)
				case name != c.counter && moved != 0:
					t.Errorf("%s moved by %d, explain named %s", name, moved, c.counter)
				}
			}
			text := b.pepsal("explain", c.src, c.dst)
			if text.code != 0 || !strings.Contains(text.stdout, "counter:   "+c.counter) {
				t.Errorf("explain text: exit %d:\n%s%s", text.code, text.stdout, text.stderr)
			}
		})
	}
}

// synCounters are the classifier's SYN decisions in st.
func synCounters(st status) map[string]uint64 {
	out := map[string]uint64{}
	for _, c := range st.Counters {
		if strings.HasPrefix(c.Name, "syn_") {
			out[c.Name] = c.Value
		}
	}
	return out
}

// health is an endpoint's status code and body, asked from inside ns.
func health(t *testing.T, ns *testbed.NS, path string) (int, string) {
	t.Helper()
	out, err := ns.Command("curl", "-s", "--max-time", "10", "-w", "\n%{http_code}", "http://"+metricsAddr+path).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", path, err)
	}
	body, code, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	var n int
	fmt.Sscan(code, &n)
	return n, body
}

// TestHealthEndpoints: /healthz and /ready answer 200 while pepsal serves;
// /ready alone turns 503 while the connection limit holds; both turn 503,
// saying why, once an interface the classifier was attached to is gone.
func TestHealthEndpoints(t *testing.T) {
	b := newBed(t, defaultSuite())
	if out, err := b.Router.Command("ip", "link", "add", "pt-extra", "type", "veth", "peer", "name", "pt-extra-p").CombinedOutput(); err != nil {
		t.Fatalf("add veth: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = b.Router.Command("ip", "link", "del", "pt-extra").Run() })
	if err := b.Router.LinkUp("pt-extra"); err != nil {
		t.Fatal(err)
	}
	peerServer(t, b.Server, hostPort(testbed.ServerV4, 8080))
	b.startPepsal("--iface", testbed.RouterClientIf, "--iface", "pt-extra", "--metrics-addr", metricsAddr, "--max-conns", "2")
	for _, path := range []string{"/healthz", "/ready"} {
		if code, body := health(t, b.Router, path); code != 200 || !strings.Contains(body, `"status":"ok"`) {
			t.Fatalf("%s: %d %s, want 200 ok", path, code, body)
		}
	}

	// Two live connections fill --max-conns 2.
	var held []*net.TCPConn
	for range 2 {
		c := mustDial(t, b.Client, hostPort(testbed.ServerV4, 8080))
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, 10*time.Second, "the limit to hold", func() bool { code, _ := health(t, b.Router, "/ready"); return code == 503 })
	if code, body := health(t, b.Router, "/healthz"); code != 200 {
		t.Errorf("/healthz %d %s while merely full: want 200", code, body)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, 10*time.Second, "the limit to lift", func() bool { code, _ := health(t, b.Router, "/ready"); return code == 200 })

	if out, err := b.Router.Command("ip", "link", "del", "pt-extra").CombinedOutput(); err != nil {
		t.Fatalf("delete veth: %v: %s", err, out)
	}
	for _, path := range []string{"/healthz", "/ready"} {
		code, body := health(t, b.Router, path)
		if code != 503 || !strings.Contains(body, "no longer exists") {
			t.Errorf("%s after the interface went: %d %s, want 503 naming it", path, code, body)
		}
	}
}

// TestHealthzPinsRemoved: once the attachment's pins are gone (removed by
// hand: no detach can find it any more), /healthz and /ready say so with
// 503.
func TestHealthzPinsRemoved(t *testing.T) {
	b := newBed(t, defaultSuite())
	b.startPepsal("--iface", testbed.RouterClientIf, "--metrics-addr", metricsAddr)
	if code, body := health(t, b.Router, "/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s before, want 200", code, body)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(b.Router.Path(), &st); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("/sys/fs/bpf/pepsal", fmt.Sprintf("netns-%d", st.Ino))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/healthz", "/ready"} {
		if code, body := health(t, b.Router, path); code != 503 || !strings.Contains(body, "no longer pinned") {
			t.Errorf("%s with the pins removed: %d %s, want 503 saying so", path, code, body)
		}
	}
}
