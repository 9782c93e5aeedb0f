package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// testTransparent: with --transparent the server sees the client's own
// address and port, and data, half-close and resets behave as without it.
func testTransparent(t *testing.T, cfg suite) {
	b := newBed(t, cfg)
	for _, f := range families {
		serve(t, b.Server, hostPort(f.server, 8600), func(c *net.TCPConn) {
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			req, err := io.ReadAll(c) // until the client's FIN (half-close)
			if err != nil {
				return
			}
			c.Write(bytes.Repeat(req, 1000)) // then a reply much larger than the request
		})
		transferServer(t, b.Server, hostPort(f.server, 9000))
	}
	b.startPepsal("--iface", testbed.RouterClientIf, "--transparent")
	if s := b.status(); s.counter("syn_diverted") != 0 {
		t.Fatalf("status before traffic: %+v", s)
	}
	for _, f := range families {
		c := mustDial(t, b.Client, hostPort(f.server, 8600))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		seen, err := readLine(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := c.LocalAddr().String(); seen != want {
			t.Errorf("%s: server saw %s, want the client itself %s", f.name, seen, want)
		}
		c.Write([]byte("half-close "))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte("half-close "), 1000)) {
			t.Errorf("%s: reply after half-close: %d bytes, %v", f.name, len(got), err)
		}
		if err := transfer(b.Client, hostPort(f.server, 9000), 2<<20, 3<<20, 9); err != nil {
			t.Errorf("%s transfer: %v", f.name, err)
		}
		// A reset from the client reaches the server as a reset.
		r := mustDial(t, b.Client, hostPort(f.server, 8600))
		r.SetDeadline(time.Now().Add(5 * time.Second))
		readLine(r)
		r.SetLinger(0)
		r.Close()
	}
	s := b.status()
	if got := s.counter("syn_diverted"); got != 6 {
		t.Errorf("syn_diverted = %d, want 6 (the replies from the server side are not new connections)", got)
	}
	if got := s.counter("syn_bypass_return_iface"); got != 0 {
		t.Errorf("syn_bypass_return_iface = %d: no SYN came from the server side", got)
	}
	if s.Daemon == nil || s.Daemon.Stats.Reset < 2 {
		t.Errorf("daemon stats %+v: want the 2 client resets propagated", s.Daemon)
	}
}
