// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestConnRateHeavy measures short connections per second to one server
// address and port, routed and through pepsal (both relays), for
// PEPSAL_RATE_SECONDS each (default 120): every connection must work. It is
// a measurement, run by hand, not in make test:
//
//	PEPSAL_RATE_HEAVY=1 go test -p 1 -count=1 -v -run TestConnRateHeavy ./tests/integration/
func TestConnRateHeavy(t *testing.T) {
	if os.Getenv("PEPSAL_RATE_HEAVY") == "" {
		t.Skip("a measurement: set PEPSAL_RATE_HEAVY=1")
	}
	secs := 120
	if n, err := strconv.Atoi(os.Getenv("PEPSAL_RATE_SECONDS")); err == nil && n > 0 {
		secs = n
	}
	const workers = 32
	rates := map[string]float64{}
	for _, mode := range []string{"routed", "splice", "sockmap"} {
		t.Run(mode, func(t *testing.T) {
			// "routed" starts no daemon; the others run with the product's
			// --offload-after.
			b := newBed(t, suite{relay: mode})
			addr := hostPort(testbed.ServerV4, 7740)
			// The server answers and closes first, as web servers do: no
			// TIME_WAIT on the client or the router.
			serve(t, b.Server, addr, func(c *net.TCPConn) {
				buf := make([]byte, 64)
				if n, err := c.Read(buf); err == nil {
					c.Write(buf[:n])
				}
			})
			if mode != "routed" {
				// At the product's log level: the suite's debug level
				// writes two lines per connection, thousands a second.
				b.startPepsal("--iface", testbed.RouterClientIf, "--log-level", "info")
			}
			var ok, failed atomic.Int64
			var firstErr atomic.Value
			deadline := time.Now().Add(time.Duration(secs) * time.Second)
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					msg := []byte("hi")
					got := make([]byte, 2)
					for time.Now().Before(deadline) {
						err := func() error {
							c, err := dial(b.Client, addr, 5*time.Second)
							if err != nil {
								return err
							}
							defer c.Close()
							c.SetDeadline(time.Now().Add(10 * time.Second))
							if _, err := c.Write(msg); err != nil {
								return err
							}
							if _, err := io.ReadFull(c, got); err != nil {
								return err
							}
							if n, err := c.Read(got); n != 0 || err != io.EOF {
								return fmt.Errorf("after the answer: %d bytes, %v", n, err)
							}
							return nil
						}()
						if err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
						} else {
							ok.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			rate := float64(ok.Load()) / float64(secs)
			rates[mode] = rate
			t.Logf("%s: %d connections in %d s (%.0f/s), %d failed", mode, ok.Load(), secs, rate, failed.Load())
			if failed.Load() > 0 {
				t.Errorf("%s: %d connections failed, first: %v", mode, failed.Load(), firstErr.Load())
			}
			if mode != "routed" {
				if s := b.status(); s.counter("syn_diverted") < uint64(ok.Load()) {
					t.Errorf("%s: syn_diverted %d < %d connections: not all split", mode, s.counter("syn_diverted"), ok.Load())
				}
			}
		})
	}
	if rates["routed"] > 0 {
		t.Logf("through pepsal vs routed: splice %.2fx, sockmap %.2fx", rates["splice"]/rates["routed"], rates["sockmap"]/rates["routed"])
	}
}
