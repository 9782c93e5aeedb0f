// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestDialFastOpenTimed: a fast-open dial reports to the connect histogram
// like an ordinary dial, success and failure alike.
func TestDialFastOpenTimed(t *testing.T) {
	type obs struct {
		d   time.Duration
		err error
	}
	got := make(chan obs, 4)
	next := func() obs {
		select {
		case o := <-got:
			return o
		case <-time.After(5 * time.Second):
			t.Fatal("dial not observed")
			return obs{}
		}
	}
	dialer := &Dialer{Timeout: 5 * time.Second}
	dialer.ObserveConnects(func(d time.Duration, err error) { got <- obs{d, err} })
	defer dialer.ObserveConnects(nil)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	conn, _, err := dialer.dialFastOpen(context.Background(), netip.AddrPort{}, dst, 0, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if o := next(); o.err != nil || o.d <= 0 {
		t.Errorf("successful dial observed as %v after %v", o.err, o.d)
	}

	ln.Close() // nothing listens there now: refused
	if _, _, err := dialer.dialFastOpen(context.Background(), netip.AddrPort{}, dst, 0, []byte("hello")); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if o := next(); o.err == nil {
		t.Errorf("failed dial observed as a success")
	}
	if len(got) != 0 {
		t.Errorf("%d extra observations", len(got))
	}
}
