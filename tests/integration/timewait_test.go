// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// dialFrom connects from a fixed local port inside ns.
func dialFrom(ns *testbed.NS, local, remote string, timeout time.Duration) (*net.TCPConn, error) {
	laddr, err := net.ResolveTCPAddr("tcp", local)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout, LocalAddr: laddr}
		d.SetMultipathTCP(false)
		c, err = d.Dial("tcp", remote)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// TestTimeWaitAfterCrashFailsOpen: when the server closes first, the router
// keeps the client leg of the split connection in TIME_WAIT (its address is
// the server's, from sk_lookup). After the daemon dies, a client that reuses
// the same address and port must still get through, unsplit: the TIME_WAIT
// socket must neither capture its packets nor make the kernel drop them
// (early demux finds it, and ip_forward drops a packet that has a socket).
// Once a daemon serves again, the same tuple is split again.
func TestTimeWaitAfterCrashFailsOpen(t *testing.T) {
	b := newBed(t, defaultSuite())
	for _, f := range families {
		closeFirstServer(t, b.Server, hostPort(f.server, 7800))
	}
	d := b.startPepsal()
	ports := map[string]int{"ipv4": 41000, "ipv6": 41001}
	for _, f := range families {
		c, err := dialFrom(b.Client, hostPort(f.client, ports[f.name]), hostPort(f.server, 7800), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: first dial: %v", f.name, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if seen, err := readLine(c); err != nil || seen == f.client {
			t.Fatalf("%s: server saw %q (%v): the first connection was not split", f.name, seen, err)
		}
		// The server closes first: pepsal then closes the client leg first,
		// so the router holds its TIME_WAIT, and the client none.
		fmt.Fprint(c, "bye")
		if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
			t.Fatalf("%s: after bye: %d bytes, %v", f.name, n, err)
		}
		c.Close()
	}
	waitFor(t, 5*time.Second, "client legs in TIME_WAIT on the router", func() bool {
		out, _ := b.Router.Command("ss", "-Htan", "state", "time-wait").CombinedOutput()
		return strings.Count(string(out), ":41000") == 1 && strings.Count(string(out), ":41001") == 1
	})

	if err := d.Stop(syscall.SIGKILL, 5*time.Second); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Logf("daemon ended: %v", err)
	}
	before := b.status().counter("syn_bypass_no_listener")
	for _, f := range families {
		// The client's side of the old connection closed last, so it holds
		// no TIME_WAIT: it may reuse the port at once, as real clients do.
		c, err := dialFrom(b.Client, hostPort(f.client, ports[f.name]), hostPort(f.server, 7800), 4*time.Second)
		if err != nil {
			t.Fatalf("%s: dial after the crash, same address and port: %v", f.name, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		seen, err := readLine(c)
		if err != nil || seen != f.client {
			t.Errorf("%s: after the crash the server saw %q (%v), want the client itself (unsplit)", f.name, seen, err)
		}
		msg := "still flowing"
		fmt.Fprint(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Errorf("%s: echo through the unsplit flow: %q, %v", f.name, got, err)
		}
		c.Close()
	}
	if after := b.status().counter("syn_bypass_no_listener"); after < before+2 {
		t.Errorf("syn_bypass_no_listener %d -> %d, want +2", before, after)
	}

	b.startPepsal()
	for _, f := range families {
		if seen := peerSeen(t, b.Client, hostPort(f.server, 7800)); seen == f.client {
			t.Errorf("%s: a daemon serves again but the connection was not split", f.name)
		}
	}
}

// closeFirstServer tells each client the address it sees, echoes, and
// closes at once when it reads "bye".
func closeFirstServer(t *testing.T, ns *testbed.NS, addr string) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Fprintf(c, "%s\n", net.ParseIP(host))
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) == "bye" {
				return
			}
			c.Write(buf[:n])
		}
	})
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
