// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
	"golang.org/x/sys/unix"
)

// Reliability of the daemon itself (issue #10): fd shortage, crash, fd cost.

// forEachRelay runs fn once per relay mode, with the settings TestSplice and
// TestSockmap run the relay suite with.
func forEachRelay(t *testing.T, fn func(t *testing.T, cfg suite)) {
	for _, mode := range []string{"splice", "sockmap"} {
		t.Run(mode, func(t *testing.T) { fn(t, defaultSuite().inRelay(mode)) })
	}
}

func (b *bed) daemonPID() int {
	b.t.Helper()
	return b.daemonInfo().PID
}

// fdKinds is what a process's descriptors are, read from /proc/PID/fd.
type fdKinds struct{ total, sockets, pipes int }

func (k fdKinds) String() string {
	return fmt.Sprintf("%d fds (%d sockets, %d pipes)", k.total, k.sockets, k.pipes)
}

func processFDs(t *testing.T, pid int) fdKinds {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("daemon fds: %v", err)
	}
	var k fdKinds
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed while we looked
		}
		k.total++
		if e.Name() == "0" || e.Name() == "1" || e.Name() == "2" {
			continue // stdio: the test's pipe for the daemon's stderr
		}
		switch {
		case strings.HasPrefix(target, "socket:"):
			k.sockets++
		case strings.HasPrefix(target, "pipe:"):
			k.pipes++
		}
	}
	return k
}

// waitFDs polls the daemon's fds until ok or the deadline; it returns the last look.
func waitFDs(t *testing.T, pid int, within time.Duration, ok func(fdKinds) bool) (fdKinds, bool) {
	t.Helper()
	end := time.Now().Add(within)
	for {
		k := processFDs(t, pid)
		if ok(k) {
			return k, true
		}
		if time.Now().After(end) {
			return k, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restingFDs waits until the daemon's fds hold still (the last `pepsal
// status` may still be closing its control connection) with the given number
// of pipes, or any when pipes < 0 (a process may inherit some).
func restingFDs(t *testing.T, pid, pipes int) fdKinds {
	t.Helper()
	var last fdKinds
	same := 0
	k, ok := waitFDs(t, pid, 10*time.Second, func(k fdKinds) bool {
		if k == last && (pipes < 0 || k.pipes == pipes) {
			same++
		} else {
			last, same = k, 0
		}
		time.Sleep(50 * time.Millisecond)
		return same >= 3
	})
	if !ok {
		t.Fatalf("daemon fds do not settle (with %d pipes): %v", pipes, k)
	}
	return k
}

// TestControlSurvivesFDShortage: a daemon that runs out of fds answers
// `pepsal status` again once fds are free, accepts the connections that
// waited meanwhile, and keeps its live connections working through it: the
// accept loops wait a shortage out instead of ending.
func TestControlSurvivesFDShortage(t *testing.T) {
	b := newBed(t, defaultSuite())
	addr := hostPort(testbed.ServerV4, 7700)
	peerServer(t, b.Server, addr)
	d := b.startPepsal()
	pid := b.daemonPID()
	echo := func(c *net.TCPConn, msg string) error {
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return err
		}
		if got, err := readLine(c); err != nil || got != msg {
			return fmt.Errorf("echo %q: %v", got, err)
		}
		return nil
	}
	var live []*net.TCPConn
	for range 4 {
		c := mustDial(t, b.Client, addr)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := readLine(c); err != nil {
			t.Fatal(err)
		}
		live = append(live, c)
	}

	// Every new fd fails with EMFILE once the soft limit is below the fd
	// numbers in use: a shortage exactly as deep as idle connections
	// filling the table would make, without racing them.
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	// Only the soft limit: without CAP_SYS_RESOURCE a lowered hard limit
	// could not be raised again.
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 3, Max: old.Max}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	restore := sync.OnceFunc(func() {
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
	defer restore()
	if r := b.pepsal("status"); r.code == 0 {
		t.Fatal("status answered with no fd to be had: the test drove no shortage")
	}
	// A connection that arrives now waits in the listener's queue.
	waiting := mustDial(t, b.Client, addr)
	waiting.SetDeadline(time.Now().Add(60 * time.Second))
	// Live connections go on (the splice relay cannot make a pipe now).
	for i, c := range live {
		if err := echo(c, fmt.Sprintf("during the shortage %d", i)); err != nil {
			t.Errorf("live connection %d during the shortage: %v", i, err)
		}
	}
	if logs := d.Output(); !strings.Contains(logs, "control accept") || !strings.Contains(logs, "too many open files") {
		t.Fatal("the control socket never saw EMFILE: the test drove no shortage")
	}

	restore()
	var r result
	for end := time.Now().Add(20 * time.Second); ; {
		if r = b.pepsal("status"); r.code == 0 || time.Now().After(end) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.code != 0 {
		t.Fatalf("status does not answer once fds are free: %s%s", r.stdout, r.stderr)
	}
	if got, err := readLine(waiting); err != nil || got != testbed.RouterServerV4 {
		t.Fatalf("connection made during the shortage: server saw %q (%v), want the router %s", got, err, testbed.RouterServerV4)
	}
	for i, c := range append(live, waiting) {
		if err := echo(c, "after the shortage"); err != nil {
			t.Errorf("connection %d after the shortage: %v", i, err)
		}
	}
}

// endlessServer writes to every connection until a write fails, and
// reports that error.
func endlessServer(t *testing.T, ns *testbed.NS, addr string, writeErrs chan<- error) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				writeErrs <- err
				return
			}
		}
	})
}

// TestCrashResetsConnections: when the daemon is killed (SIGKILL: no
// clean-up code runs), clients in the middle of a download get a reset,
// never a clean EOF that would pass a cut-off stream for a complete one;
// servers get a reset too, and the dead daemon leaves no TIME_WAIT sockets.
func TestCrashResetsConnections(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		const perFamily = 4
		b := newBed(t, cfg)
		writeErrs := make(chan error, 2*perFamily)
		for _, f := range families {
			endlessServer(t, b.Server, hostPort(f.server, 7710), writeErrs)
		}
		d := b.startPepsal()

		var conns []*net.TCPConn
		for _, f := range families {
			for range perFamily {
				c := mustDial(t, b.Client, hostPort(f.server, 7710))
				c.SetDeadline(time.Now().Add(60 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, 256<<10)); err != nil {
					t.Fatalf("%s download before the crash: %v", f.name, err)
				}
				conns = append(conns, c)
			}
		}
		if n := b.daemonInfo().Stats.Active; n != int64(len(conns)) {
			t.Fatalf("%d connections split, want %d", n, len(conns))
		}
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}

		var wg sync.WaitGroup
		errs := make([]error, len(conns))
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = io.Copy(io.Discard, c)
				c.Close()
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case err == nil:
				t.Errorf("client %d: clean EOF after the daemon was killed: a cut-off download looks complete", i)
			case !errors.Is(err, syscall.ECONNRESET):
				t.Errorf("client %d: %v after the daemon was killed, want ECONNRESET", i, err)
			}
		}
		for range conns {
			if err := <-writeErrs; !isReset(err) {
				t.Errorf("server: %v after the daemon was killed, want a reset", err)
			}
		}
		out, err := b.Router.Command("ss", "-Htan", "state", "time-wait").CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(l, ":7710 ") {
				t.Errorf("TIME_WAIT left by the dead daemon: %s", l)
			}
		}
	})
}

// TestGracefulEndKeepsFINAndBytes: the reset armed against a crash must not
// touch a normal end. The client uploads and half-closes, the server answers
// and closes; the client reads nothing until the daemon has closed both legs
// (the answer then waits in the client leg's send queue), and still gets
// every byte and a clean EOF.
func TestGracefulEndKeepsFINAndBytes(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		const up, down = 512 << 10, 1 << 20
		b := newBed(t, cfg)
		answer := bytes.Repeat([]byte("pepsal graceful end. "), down/21+1)[:down]
		uploads := make(chan []byte, 2)
		for _, f := range families {
			ln := listen(t, b.Server, hostPort(f.server, 7720))
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				h := sha256.New()
				io.Copy(h, c) // to the client's half-close
				uploads <- h.Sum(nil)
				c.Write(answer)
			}()
		}
		// The whole answer fits in the client leg's send queue.
		b.startPepsal("--iface", testbed.RouterClientIf, "--client-sndbuf", "8MiB")
		request := bytes.Repeat([]byte{0x5e}, up)
		for _, f := range families {
			c := mustDial(t, b.Client, hostPort(f.server, 7720))
			c.SetDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(request); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if got, want := <-uploads, sha256.Sum256(request); !bytes.Equal(got, want[:]) {
				t.Fatalf("%s: upload corrupted or truncated", f.name)
			}
			for end := time.Now().Add(20 * time.Second); b.daemonInfo().Stats.Active != 0; {
				if time.Now().After(end) {
					t.Fatalf("%s: the relay did not finish while the client read nothing", f.name)
				}
				time.Sleep(50 * time.Millisecond)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("%s: after %d bytes: %v, want every byte and a clean EOF", f.name, len(got), err)
			}
			if !bytes.Equal(got, answer) {
				t.Fatalf("%s: got %d bytes, want the %d of the answer", f.name, len(got), len(answer))
			}
		}
		if st := b.daemonInfo().Stats; st.Completed != 2 || st.Reset != 0 {
			t.Errorf("daemon counted %+v, want 2 completed and no reset", st)
		}
	})
}

// TestSpliceFDCost: in splice mode an idle split connection costs the
// daemon its two sockets and no pipe, and after a churn of short
// connections the daemon's fds come back to where they were.
func TestSpliceFDCost(t *testing.T) {
	const idle, churn = 20, 200
	b := newBed(t, defaultSuite())
	for _, f := range families {
		peerServer(t, b.Server, hostPort(f.server, 7730))
	}
	b.startPepsal()
	pid := b.daemonPID()
	start := restingFDs(t, pid, -1) // before any connection: no pipe of pepsal's
	exchange := func(c *net.TCPConn) error {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := readLine(c); err != nil {
			return fmt.Errorf("greeting: %w", err)
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		if got, err := readLine(c); err != nil || got != "ping" {
			return fmt.Errorf("echo %q: %v", got, err)
		}
		return nil
	}
	warm := mustDial(t, b.Client, hostPort(testbed.ServerV4, 7730))
	if err := exchange(warm); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	for end := time.Now().Add(10 * time.Second); b.daemonInfo().Stats.Active != 0; {
		if time.Now().After(end) {
			t.Fatal("the first connection does not end")
		}
		time.Sleep(50 * time.Millisecond)
	}
	base := restingFDs(t, pid, start.pipes)

	var conns []*net.TCPConn
	for i := range idle {
		c := mustDial(t, b.Client, hostPort(families[i%2].server, 7730))
		if err := exchange(c); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	want := fdKinds{total: base.total + 2*idle, sockets: base.sockets + 2*idle, pipes: base.pipes}
	if got, ok := waitFDs(t, pid, 10*time.Second, func(k fdKinds) bool { return k == want }); !ok {
		t.Errorf("%d idle connections: daemon holds %v, want %v (two sockets each, no pipe)", idle, got, want)
	}

	var wg sync.WaitGroup
	errs := make(chan error, churn)
	for i := range churn {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(b.Client, hostPort(families[i%2].server, 7730), 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := exchange(c); err != nil {
				errs <- fmt.Errorf("churn connection %d: %w", i, err)
			}
		}()
		if i%20 == 19 {
			wg.Wait() // 20 at a time: a churn, not a flood
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, ok := waitFDs(t, pid, 5*time.Second, func(k fdKinds) bool { return k == want }); !ok {
		t.Errorf("5 s after %d short connections: daemon holds %v, want %v", churn, got, want)
	}
	for _, c := range conns {
		c.Close()
	}
	if got, ok := waitFDs(t, pid, 10*time.Second, func(k fdKinds) bool { return k == base }); !ok {
		t.Errorf("all connections closed: daemon holds %v, want %v as before", got, base)
	}
}
