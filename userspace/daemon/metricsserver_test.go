// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startHTTP serves a small handler with lim on a loopback port.
func startHTTP(t *testing.T, lim httpLimits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pepsal_up 1\n") })
	stop := serveHTTP(ln, h, lim, slog.New(slog.DiscardHandler))
	t.Cleanup(stop)
	return ln.Addr().String()
}

// scrape sends one keep-alive request on c and reads the answer whole.
func scrape(c net.Conn, r *bufio.Reader) error {
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: pepsal\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// closedBy waits up to limit for the server to close c; it returns how long
// that took, or fails the test.
func closedBy(t *testing.T, c net.Conn, r io.Reader, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	n, err := r.Read(make([]byte, 1))
	if n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("after %s: read %d bytes, %v; want the server to close the connection", time.Since(start).Round(time.Millisecond), n, err)
	}
	return time.Since(start)
}

// TestMetricsServerTimesOut: a keep-alive client that stays idle after a
// scrape, or one that never sends a whole request, is disconnected after
// the idle or the header timeout, not held forever.
func TestMetricsServerTimesOut(t *testing.T) {
	lim := httpLimits{ReadHeader: 300 * time.Millisecond, Read: time.Second, Write: time.Second, Idle: 300 * time.Millisecond, MaxConns: 4}
	addr := startHTTP(t, lim)

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	r := bufio.NewReader(idle)
	if err := scrape(idle, r); err != nil {
		t.Fatal(err)
	}
	if took := closedBy(t, idle, r, 3*time.Second); took < lim.Idle/2 {
		t.Errorf("idle connection closed after %s, before the idle timeout %s", took, lim.Idle)
	}

	mute, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	io.WriteString(mute, "GET /metrics HTTP/1.1\r\n") // and never the rest
	closedBy(t, mute, mute, 3*time.Second)
}

// TestMetricsServerCapsConnections: with the daemon's limits, 64 clients
// holding connections are served and the 65th is closed at once; once one
// goes, a new client is served again.
func TestMetricsServerCapsConnections(t *testing.T) {
	lim := metricsLimits()
	addr := startHTTP(t, lim)
	held := make([]net.Conn, lim.MaxConns)
	for i := range held {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := scrape(c, bufio.NewReader(c)); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		held[i] = c
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if err := scrape(extra, bufio.NewReader(extra)); err == nil {
		t.Fatalf("connection %d served, want it closed", lim.MaxConns+1)
	}
	closedBy(t, extra, extra, 2*time.Second)

	held[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		err = scrape(c, bufio.NewReader(c))
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no client served after one of %d went: %v", lim.MaxConns, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsWarnsOnEveryInterface: a metrics listener bound to every
// interface (--metrics-addr :9595, 0.0.0.0:9595, [::]:9595) is said at
// start; one bound to an address is not.
func TestMetricsWarnsOnEveryInterface(t *testing.T) {
	for addr, want := range map[string]bool{
		"0.0.0.0:9595": true, "[::]:9595": true, "[::ffff:0.0.0.0]:9595": true,
		"127.0.0.1:9595": false, "[::1]:9595": false, "192.0.2.1:9595": false, "[2001:db8::1]:9595": false,
	} {
		tcp, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := servesEverywhere(tcp); got != want {
			t.Errorf("servesEverywhere(%s) = %v, want %v", addr, got, want)
		}
	}
	for addr, want := range map[string]bool{":0": true, "127.0.0.1:0": false} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		var logged bytes.Buffer
		stop := serveHTTP(ln, http.NotFoundHandler(), metricsLimits(), slog.New(slog.NewTextHandler(&logged, nil)))
		stop()
		if got := strings.Contains(logged.String(), "level=WARN") && strings.Contains(logged.String(), "every interface"); got != want {
			t.Errorf("listening on %s: logged %q; want a warning: %v", addr, logged.String(), want)
		}
	}
}
