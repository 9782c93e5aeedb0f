// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/harness"
	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
	"github.com/pepsal/pepsal/userspace/report"
)

// daemonIdentity is who answers `pepsal status`.
func (b *bed) daemonIdentity() (pid int, version string) {
	// Not statusIn: for a moment during the handover status may not answer.
	var s report.StatusReport
	r := b.pepsal("status", "--json")
	if json.Unmarshal([]byte(r.stdout), &s) != nil || s.Daemon == nil {
		return 0, ""
	}
	return s.Daemon.PID, s.Daemon.Version
}

// pacedServer sends each client size bytes of a seeded stream in small
// steps, so that its downloads are still running across an upgrade.
func pacedServer(t *testing.T, ns *testbed.NS, addr string, size int64) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		var seed [8]byte
		if _, err := io.ReadFull(c, seed[:]); err != nil {
			return
		}
		src := io.LimitReader(newStream(uint64(seed[0])), size)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				return
			}
		}
	})
}

// TestUpgradeUnderChurn: the binary on disk is replaced and the daemon gets
// SIGHUP while short connections come and go and long downloads run. The new
// binary takes over at once (status names its pid and version), the old
// process relays its downloads to the end and exits, and in all of it no
// connection fails, no byte is lost and every new connection is split (none
// refused, reset or forwarded unsplit). The new daemon then owns the
// attachment: its SIGTERM leaves nothing behind.
func TestUpgradeUnderChurn(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		b := newBed(t, cfg)
		before := netState(t, b.Router)
		for _, f := range families {
			transferServer(t, b.Server, hostPort(f.server, 7730))
			pacedServer(t, b.Server, hostPort(f.server, 7731), 2<<20)
		}
		// What systemd (Type=notify) would be told.
		notifyPath := filepath.Join(t.TempDir(), "notify")
		notifySock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer notifySock.Close()
		old, installed, oldDone := startUpgradable(t, b.Router, []string{"NOTIFY_SOCKET=" + notifyPath},
			"--relay", cfg.relay, "--iface", testbed.RouterClientIf)
		oldPID, oldVersion := b.daemonIdentity()
		if oldPID != old.Process.Pid {
			t.Fatalf("status names pid %d, the daemon is %d", oldPID, old.Process.Pid)
		}
		t.Cleanup(func() { // the new daemon is not our child: stop it by pid
			if pid, _ := b.daemonIdentity(); pid != 0 && pid != oldPID {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		})

		// Long downloads that span the upgrade (about 1.3 s each).
		var longWG sync.WaitGroup
		longErrs := make(chan error, 8)
		for i := range 4 {
			f := families[i%2]
			longWG.Add(1)
			go func() {
				defer longWG.Done()
				c, err := dial(b.Client, hostPort(f.server, 7731), 5*time.Second)
				if err != nil {
					longErrs <- fmt.Errorf("long download %d: %w", i, err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				seed := [8]byte{byte(i + 1)}
				c.Write(seed[:])
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil || n != 2<<20 || string(h.Sum(nil)) != string(streamHash(uint64(i+1), 2<<20)) {
					longErrs <- fmt.Errorf("long download %d: %d of %d bytes, hash ok %v, %v", i, n, 2<<20, string(h.Sum(nil)) == string(streamHash(uint64(i+1), 2<<20)), err)
				}
			}()
		}

		// Churn: short byte-exact transfers, all the time.
		var churned atomic.Int64
		churnErrs := make(chan error, 1000)
		stopChurn := make(chan struct{})
		var churnWG sync.WaitGroup
		for w := range 4 {
			churnWG.Add(1)
			go func() {
				defer churnWG.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				for i := 0; ; i++ {
					select {
					case <-stopChurn:
						return
					default:
					}
					f := families[(w+i)%2]
					if err := transfer(b.Client, hostPort(f.server, 7730), rng.Int64N(64<<10), rng.Int64N(256<<10), rng.Uint64()); err != nil {
						churnErrs <- fmt.Errorf("churn %d.%d (%s): %w", w, i, f.name, err)
					}
					churned.Add(1)
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)

		// A new binary replaces the old one on disk, as a package upgrade does.
		next := filepath.Join(t.TempDir(), "pepsal-next")
		if err := harness.Build(next, "-ldflags", "-X main.version=upgraded-test"); err != nil {
			t.Fatalf("the new binary: %v", err)
		}
		if err := os.Rename(next, installed); err != nil {
			t.Fatal(err)
		}
		atUpgrade := churned.Load()
		if err := old.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// For a moment both processes answer on the control socket (the old
		// one closes its copy once the new one is ready): keep the first
		// answer from the new one.
		var newPID int
		deadline := time.Now().Add(30 * time.Second)
		for {
			pid, version := b.daemonIdentity()
			if pid != 0 && pid != oldPID && version == "upgraded-test" {
				newPID = pid
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("status still names pid %d version %q (was %d %q) 30 s after SIGHUP", pid, version, oldPID, oldVersion)
			}
			time.Sleep(50 * time.Millisecond)
		}
		var notes []string
		for {
			notifySock.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 256)
			n, err := notifySock.Read(buf)
			if err != nil {
				break
			}
			notes = append(notes, string(buf[:n]))
		}
		if want := []string{"READY=1", "RELOADING=1", fmt.Sprintf("MAINPID=%d\nREADY=1", newPID)}; !slices.Equal(notes, want) {
			t.Errorf("systemd was told %q, want %q", notes, want)
		}
		time.Sleep(time.Second) // churn on the new daemon
		close(stopChurn)
		churnWG.Wait()
		longWG.Wait()
		close(churnErrs)
		close(longErrs)
		for err := range churnErrs {
			t.Error(err)
		}
		for err := range longErrs {
			t.Error(err)
		}
		if churned.Load() <= atUpgrade {
			t.Errorf("no connection after the upgrade (%d in all)", churned.Load())
		}
		t.Logf("%d short connections, %d after SIGHUP", churned.Load(), churned.Load()-atUpgrade)

		// The old process ends by itself once its downloads are done.
		select {
		case err := <-oldDone:
			if err != nil {
				t.Errorf("old daemon: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("old daemon still running after its connections ended")
		}
		s := b.status()
		for _, name := range []string{"syn_bypass_no_listener", "steer_no_listener", "steer_assign_failed"} {
			if n := s.counter(name); n != 0 {
				t.Errorf("%s = %d: a SYN was not split during the upgrade", name, n)
			}
		}
		if n := s.counter("syn_diverted"); n < uint64(churned.Load()) {
			t.Errorf("syn_diverted %d < %d connections", n, churned.Load())
		}

		syscall.Kill(newPID, syscall.SIGTERM)
		for i := 0; syscall.Kill(newPID, 0) == nil; i++ {
			if i > 200 {
				t.Fatalf("new daemon %d did not stop", newPID)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if after := netState(t, b.Router); after != before {
			t.Errorf("traces left after the new daemon stopped:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// startUpgradable runs `pepsal run args...` in ns from a copy of the
// binary, which is what SIGHUP re-executes, and waits until it serves. Its
// log goes to a file, printed if the test fails: the new daemon inherits
// it and outlives the old one, which a pipe would not let Wait see exit.
// done gets the old daemon's exit.
func startUpgradable(t *testing.T, ns *testbed.NS, env []string, args ...string) (old *exec.Cmd, installed string, done <-chan error) {
	t.Helper()
	old, installed, _, done = startUpgradableLog(t, ns, env, args...)
	return old, installed, done
}

// startUpgradableLog is startUpgradable, and says where the log goes.
func startUpgradableLog(t *testing.T, ns *testbed.NS, env []string, args ...string) (old *exec.Cmd, installed, logPath string, done <-chan error) {
	t.Helper()
	installed = filepath.Join(t.TempDir(), "pepsal")
	copyFile(t, pepsalBin, installed)
	logPath = filepath.Join(t.TempDir(), "pepsal.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	old = ns.Command(installed, append([]string{"run", "--log-level", "debug"}, args...)...)
	old.Stdout, old.Stderr = logFile, logFile
	old.Env = append(os.Environ(), env...)
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- old.Wait() }()
	t.Cleanup(func() {
		old.Process.Kill()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("daemon log (%s):\n%s", ns.Name, out)
		}
	})
	waitFor(t, 15*time.Second, "the daemon serving", func() bool { return runCmdIn(ns, pepsalBin, "status").code == 0 })
	return old, installed, logPath, exited
}

// TestPeerGatewayUpgradeDropsNothing: a gateway's upgrade breaks none of
// its terminals' flows. The listener for terminals moves to the new daemon
// with its accept queue, and the warm connections the old daemon accepted
// keep waiting for their headers: a terminal may take one from its pool
// while the upgrade goes on, and a reset from the old daemon would reach it
// half a satellite round trip later, after it had sent a client's flow on
// it. The old daemon serves those, then exits.
func TestPeerGatewayUpgradeDropsNothing(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		geo, err := linkemu.Profile("geo")
		if err != nil {
			t.Fatal(err)
		}
		topo := twoPEPBed(t, testbed.Options{Prefix: "pgu", Middle: linkemu.Middle(geo)})
		for _, f := range twoPEPFamilies {
			transferServer(t, topo.Server, hostPort(f.server, 9000))
		}
		key := writeKey(t, testKey(), 0o600)
		const pool = 8
		old, _, oldDone := startUpgradable(t, topo.Gateway, nil, "--relay", cfg.relay, "--iface", testbed.GatewayLinkIf,
			"--role", "gateway", "--peer-listen", peerGatewayAddr, "--peer-key", key, "--fastopen-from", testbed.TerminalLinkV4, "--fastopen-from", testbed.TerminalLinkV6)
		startPeerTerminal(t, cfg, topo, key, pool)
		waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
		listener := listenerInode(t, topo.Gateway, peerPort)
		before := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool

		if err := old.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitSuccessor(t, topo.Gateway, old.Process.Pid)
		// At once: the flows take the warm connections the old daemon
		// accepted, while a reset it sent would still be on the link.
		var wg sync.WaitGroup
		errs := make(chan error, pool)
		for i := range pool {
			f := twoPEPFamilies[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := transfer(topo.Client, hostPort(f.server, 9000), 20<<10, 200<<10, uint64(i)); err != nil {
					errs <- fmt.Errorf("flow %d (%s) across the gateway's upgrade: %w", i, f.name, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		after := *peerStatus(t, topo.Terminal).Daemon.Peer.Pool
		if after.Dead != before.Dead || after.Taken-before.Taken != pool {
			t.Errorf("terminal's pool: %d warm connections found closed when taken, %d taken; want 0 and %d", after.Dead-before.Dead, after.Taken-before.Taken, pool)
		}
		if got := listenerInode(t, topo.Gateway, peerPort); got != listener {
			t.Errorf("the listener for terminals is socket %d after the upgrade, was %d: not handed over", got, listener)
		}
		// Its warm connections all used, the old daemon has nothing left.
		select {
		case <-oldDone:
		case <-time.After(20 * time.Second):
			t.Errorf("old gateway still running after its warm connections were used")
		}
	})
}

// TestPeerTerminalUpgradeReturnsItsPool: an upgraded terminal's old
// process, which takes no more flows, closes its idle warm connections at
// once instead of holding (and refilling) them while it drains its live
// connections: the gateway then holds the new process's pool only.
func TestPeerTerminalUpgradeReturnsItsPool(t *testing.T) {
	cfg := defaultSuite()
	topo := newPeerTopo(t)
	key := writeKey(t, testKey(), 0o600)
	startPeerGateway(t, cfg, topo, key)
	addr := hostPort(testbed.TPServerV4, 9001)
	serve(t, topo.Server, addr, func(c *net.TCPConn) {
		io.Copy(io.Discard, c) // until the client closes
	})
	const pool = 4
	old, _, oldDone := startUpgradable(t, topo.Terminal, nil, "--relay", cfg.relay, "--iface", testbed.TerminalClientIf,
		"--role", "terminal", "--peer", peerGatewayAddr, "--peer-key", key, "--peer-pool", fmt.Sprint(pool))
	waitPeer(t, topo.Terminal, "pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
	// A live flow keeps the old process draining.
	live := mustDial(t, topo.Client, addr)
	live.Write([]byte("held"))
	waitPeer(t, topo.Gateway, "the flow served and the pool refilled", func(p report.PeerStats) bool {
		return p.Gateway != nil && p.Gateway.Served == 1 && p.Gateway.Waiting == pool
	})

	if err := old.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitSuccessor(t, topo.Terminal, old.Process.Pid)
	waitPeer(t, topo.Terminal, "the new pool full", func(p report.PeerStats) bool { return p.Pool != nil && p.Pool.Idle == pool })
	waitPeer(t, topo.Gateway, "only the new terminal's pool waiting", func(p report.PeerStats) bool {
		return p.Gateway != nil && p.Gateway.Waiting == pool
	})
	select {
	case err := <-oldDone:
		t.Fatalf("the old terminal exited (%v) with a live flow", err)
	default:
	}
	live.Close()
	select {
	case <-oldDone:
	case <-time.After(20 * time.Second):
		t.Errorf("old terminal still running after its last flow ended")
	}
}

// waitSuccessor waits until `pepsal status` in ns names another daemon than
// oldPID, which it kills at the end of the test (it is not our child).
func waitSuccessor(t *testing.T, ns *testbed.NS, oldPID int) (pid int) {
	t.Helper()
	t.Cleanup(func() {
		if pid != 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitFor(t, 30*time.Second, "the new daemon serving", func() bool {
		var s report.StatusReport
		r := runCmdIn(ns, pepsalBin, "status", "--json")
		if json.Unmarshal([]byte(r.stdout), &s) == nil && s.Daemon != nil && s.Daemon.PID != oldPID {
			pid = s.Daemon.PID
		}
		return pid != 0
	})
	return pid
}

// listenerInode is the inode of the socket listening on port in ns.
func listenerInode(t *testing.T, ns *testbed.NS, port int) uint64 {
	t.Helper()
	out, err := ns.Command("ss", "-tlnHe", fmt.Sprintf("sport = :%d", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	m := regexp.MustCompile(`ino:(\d+)`).FindAllStringSubmatch(string(out), -1)
	if len(m) != 1 {
		t.Fatalf("want one listener on port %d:\n%s", port, out)
	}
	ino, _ := strconv.ParseUint(m[0][1], 10, 64)
	return ino
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}
