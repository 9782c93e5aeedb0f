// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// requestServer reads a request to EOF, answers "ok" and closes: the
// client closes first, so pepsal's upstream socket sends the first FIN and
// its TIME_WAIT stays on the router.
func requestServer(t *testing.T, ns *testbed.NS, addr string) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, c); err == nil {
			c.Write([]byte("ok"))
		}
	})
}

// shortConns makes n short request/answer connections to addr, one after
// the other, and returns how many failed.
func shortConns(b *bed, addr string, n int) (failed int, firstErr error) {
	for range n {
		err := func() error {
			c, err := dial(b.Client, addr, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("GET\n")); err != nil {
				return err
			}
			if err := c.CloseWrite(); err != nil {
				return err
			}
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if string(got) != "ok" {
				return io.ErrUnexpectedEOF
			}
			return nil
		}()
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return failed, firstErr
}

// TestUpstreamPortsReused: short connections to one server address and
// port, more than the router's ephemeral range holds while each leaves a
// TIME_WAIT of pepsal's upstream socket (issue #10 case 8, with the range
// narrowed to 150 ports so that it runs out in a second rather than after
// 28,000 connections). With net.ipv4.tcp_tw_reuse=1, set while attached,
// connect reuses a TIME_WAIT tuple once it is a second old: no client is
// reset. A negative control with the sysctl put back to the default shows
// the resets the test would see without it.
func TestUpstreamPortsReused(t *testing.T) {
	const wave = 140 // connections per wave; two waves overflow 150 ports
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 8093)
	requestServer(t, b.Server, addr)
	if err := b.Router.Sysctl("net.ipv4.ip_local_port_range", "61000 61149"); err != nil {
		t.Fatal(err)
	}
	sysctl := func(key string) string {
		out, err := b.Router.Command("sysctl", "-n", key).CombinedOutput()
		if err != nil {
			t.Fatalf("sysctl %s: %v\n%s", key, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	old := sysctl("net.ipv4.tcp_tw_reuse")
	d := b.startPepsal()
	if v := sysctl("net.ipv4.tcp_tw_reuse"); v != "1" {
		t.Fatalf("net.ipv4.tcp_tw_reuse = %s while attached, want 1", v)
	}

	// A TIME_WAIT tuple may be reused once the second it was stamped in is
	// over: the pause between waves is pacing, not a measure.
	twoWaves := func() (int, error) {
		f1, e1 := shortConns(b, addr, wave)
		time.Sleep(2 * time.Second)
		f2, e2 := shortConns(b, addr, wave)
		if e1 == nil {
			e1 = e2
		}
		return f1 + f2, e1
	}

	// Negative control: the namespace's default, no reuse for outgoing connections.
	if err := b.Router.Sysctl("net.ipv4.tcp_tw_reuse", old); err != nil {
		t.Fatal(err)
	}
	failed, err := twoWaves()
	t.Logf("tcp_tw_reuse=%s: %d of %d connections failed (first: %v)", old, failed, 2*wave, err)
	if failed == 0 {
		t.Fatalf("no connection failed with tcp_tw_reuse=%s: the test drove no port exhaustion", old)
	}
	if err != nil && !isReset(err) {
		t.Logf("control failure was %v, not a reset", err)
	}

	if err := b.Router.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the control's TIME_WAITs become reusable
	failed, err = twoWaves()
	if failed != 0 {
		t.Errorf("tcp_tw_reuse=1: %d of %d connections failed (first: %v)", failed, 2*wave, err)
	}
	if st := b.status(); st.Daemon == nil {
		t.Fatal("no daemon in status")
	}

	if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if v := sysctl("net.ipv4.tcp_tw_reuse"); v != old {
		t.Errorf("net.ipv4.tcp_tw_reuse = %s after the daemon detached, want %s back", v, old)
	}
}
