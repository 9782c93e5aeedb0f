// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKillLoop: the daemon is killed with SIGKILL under load and restarted,
// 20 times per relay mode. Every client in the middle of a download gets a
// reset (never a clean EOF); connections opened while no daemon serves are
// forwarded unsplit and keep working after the restart; connections opened
// after the restart are split; the restarted daemon adopts the dead one's
// attachment, and once the last one stops nothing is left.
func TestKillLoop(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		const kills, loaded = 20, 4
		b := newBed(t, cfg)
		before := netState(t, b.Router)
		writeErrs := make(chan error, 4*kills*loaded)
		for _, f := range families {
			endlessServer(t, b.Server, hostPort(f.server, 7720), writeErrs)
			peerServer(t, b.Server, hostPort(f.server, 7721))
		}
		var unsplit []*net.TCPConn // opened while the daemon was dead
		var d *daemon
		for round := range kills {
			d = b.startPepsal()
			for _, f := range families {
				if seen := peerSeen(t, b.Client, hostPort(f.server, 7721)); seen != f.routerServer {
					t.Fatalf("round %d, %s: a new connection after the restart was not split (server saw %s)", round, f.name, seen)
				}
			}
			// Flows opened while the previous daemon was dead are not the
			// new daemon's: they keep flowing unsplit.
			for i, c := range unsplit {
				if err := echoOnce(c, fmt.Sprintf("round %d", round)); err != nil {
					t.Fatalf("round %d: unsplit connection %d after the restart: %v", round, i, err)
				}
			}

			var loadedConns []*net.TCPConn
			for i := range loaded {
				f := families[i%len(families)]
				c := mustDial(t, b.Client, hostPort(f.server, 7720))
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
					t.Fatalf("round %d, %s: download before the kill: %v", round, f.name, err)
				}
				loadedConns = append(loadedConns, c)
			}
			if err := d.Kill(); err != nil {
				t.Fatal(err)
			}

			var wg sync.WaitGroup
			errs := make([]error, len(loadedConns))
			for i, c := range loadedConns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = io.Copy(io.Discard, c)
					c.Close()
				}()
			}
			// While the downloads die, and before any restart, new
			// connections go through unsplit.
			for _, f := range families {
				c := mustDial(t, b.Client, hostPort(f.server, 7721))
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if seen, err := readLine(c); err != nil || seen != f.client {
					t.Fatalf("round %d, %s: with the daemon dead the server saw %q (%v), want the client (unsplit)", round, f.name, seen, err)
				}
				if err := echoOnce(c, "while dead"); err != nil {
					t.Fatalf("round %d, %s: unsplit connection while dead: %v", round, f.name, err)
				}
				unsplit = append(unsplit, c)
			}
			wg.Wait()
			for i, err := range errs {
				switch {
				case err == nil:
					t.Fatalf("round %d, client %d: clean EOF after SIGKILL: a cut-off download looks complete", round, i)
				case !errors.Is(err, syscall.ECONNRESET):
					t.Fatalf("round %d, client %d: %v after SIGKILL, want ECONNRESET", round, i, err)
				}
			}
		}
		// The last restart adopts the attachment; its SIGTERM removes it all.
		d = b.startPepsal()
		for i, c := range unsplit {
			if err := echoOnce(c, "last"); err != nil {
				t.Errorf("unsplit connection %d at the end: %v", i, err)
			}
			c.Close()
		}
		if err := d.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Fatalf("last daemon: %v", err)
		}
		if after := netState(t, b.Router); after != before {
			t.Errorf("traces left after the last daemon stopped:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// echoOnce writes msg and reads it back.
func echoOnce(c *net.TCPConn, msg string) error {
	// Its own deadline: a connection kept across rounds may have lived
	// longer than the deadline it was opened with (a slow machine).
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}
