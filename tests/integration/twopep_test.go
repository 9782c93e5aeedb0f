// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// newTwoPEP builds client -- terminal -- 300 ms link -- gateway -- server and
// starts pepsal on both ends of the link with their roles.
func newTwoPEP(t *testing.T, cfg suite) *testbed.TwoPEP {
	t.Helper()
	slow := linkemu.Link{Down: linkemu.Dir{Delay: 300 * time.Millisecond}, Up: linkemu.Dir{Delay: 300 * time.Millisecond}}
	topo := twoPEPBed(t, testbed.Options{Prefix: "pit", Middle: linkemu.Middle(slow)})
	startPepsalIn(t, cfg, topo.Terminal, "--iface", testbed.TerminalClientIf, "--role", "terminal")
	startPepsalIn(t, cfg, topo.Gateway, append([]string{"--iface", testbed.GatewayLinkIf, "--role", "gateway"}, trustTerminal...)...)
	return topo
}

// trustTerminal lets a gateway take data in SYNs from the terminal's side
// of the link (issue #22, 2): its cold flows dial with the request in the SYN.
var trustTerminal = []string{"--fastopen-from", testbed.TerminalLinkV4, "--fastopen-from", testbed.TerminalLinkV6}

// twoPEPBed builds a two-PEP bed; at cleanup it detaches both ends and
// deletes the bed.
func twoPEPBed(t *testing.T, opt testbed.Options) *testbed.TwoPEP {
	t.Helper()
	topo, err := testbed.NewTwoPEP(opt)
	if err != nil {
		t.Fatalf("two-PEP test bed: %v", err)
	}
	t.Cleanup(func() {
		for _, ns := range []*testbed.NS{topo.Terminal, topo.Gateway} {
			runCmdIn(ns, pepsalBin, "detach")
		}
		if err := topo.Close(); err != nil {
			t.Errorf("close test bed: %v", err)
		}
	})
	return topo
}

// netstat reads a TcpExt counter of the namespace.
func netstat(t *testing.T, ns *testbed.NS, name string) int {
	t.Helper()
	var out int
	err := ns.Do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/netstat") // /proc/net follows the process, not this thread
		if err != nil {
			return err
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := range keys {
				if keys[j] == name && j < len(vals) {
					out, _ = strconv.Atoi(vals[j])
					return nil
				}
			}
		}
		return fmt.Errorf("no %s in /proc/net/netstat", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testTwoPEPFastOpen: between two pepsals the client's request rides on the
// SYN of the long leg, which the terminal sends with the request in it and
// the gateway accepts (the kernels' fast-open counters say so, at both
// ends: how long it took is logged, not judged, as it depends on the
// machine's load), and transfers through both are byte-exact.
func testTwoPEPFastOpen(t *testing.T, cfg suite) {
	topo := newTwoPEP(t, cfg)
	type fam struct{ name, server string }
	fams := []fam{{"ipv4", testbed.TPServerV4}, {"ipv6", testbed.TPServerV6}}
	arrived := make(chan time.Time, 4)
	for _, f := range fams {
		serve(t, topo.Server, hostPort(f.server, 8500), func(c *net.TCPConn) {
			req := make([]byte, 4)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			arrived <- time.Now()
			c.Write([]byte("200\n"))
		})
		transferServer(t, topo.Server, hostPort(f.server, 9000))
	}
	// Resolve the link's neighbours first: the first packet across waits one
	// round trip for ARP/NDP, which is not what this test measures.
	for _, f := range fams {
		if err := ping(topo.Client, f.server); err != nil {
			t.Fatalf("%s warm-up ping: %v", f.name, err)
		}
	}
	before := netstat(t, topo.Gateway, "TCPFastOpenPassive")
	sentBefore := netstat(t, topo.Terminal, "TCPFastOpenActive")
	for _, f := range fams {
		start := time.Now()
		c := mustDial(t, topo.Client, hostPort(f.server, 8500))
		c.Write([]byte("GET\n"))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if line, err := readLine(c); err != nil || line != "200" {
			t.Fatalf("%s: reply %q, %v", f.name, line, err)
		}
		c.Close()
		select {
		case at := <-arrived:
			// Without fast open about 900 ms, with it about 300 ms.
			t.Logf("%s: request at the server after %s", f.name, at.Sub(start))
		default:
			t.Fatalf("%s: server saw no request", f.name)
		}
		if err := transfer(topo.Client, hostPort(f.server, 9000), 1<<20, 2<<20, 77); err != nil {
			t.Errorf("%s transfer through two pepsals: %v", f.name, err)
		}
	}
	// Each request is a flow's first bytes, dialed with fast open: data in
	// the SYN that the gateway acknowledged (Active), and accepted (Passive).
	if after := netstat(t, topo.Terminal, "TCPFastOpenActive"); after-sentBefore < 2 {
		t.Errorf("the terminal's SYN data was acknowledged %d times, want at least 2", after-sentBefore)
	}
	if after := netstat(t, topo.Gateway, "TCPFastOpenPassive"); after-before < 2 {
		t.Errorf("gateway accepted %d fast-open SYNs, want at least 2", after-before)
	}
}

// testLoneTerminalFallsBack: a pepsal that dials with fast open in front of an
// ordinary server (no fast open) still works, byte for byte.
func testLoneTerminalFallsBack(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		transferServer(t, b.Server, hostPort(f.server, 9000))
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--role", "terminal")
	for _, f := range families {
		if err := transfer(b.Client, hostPort(f.server, 9000), 300<<10, 1<<20, 5); err != nil {
			t.Errorf("%s: %v", f.name, err)
		}
	}
	if n := netstat(t, b.Router, "TCPFastOpenActive"); n != 0 {
		t.Errorf("TCPFastOpenActive = %d: an ordinary server cannot have accepted SYN data", n)
	}
}
