// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/testbed"
)

// TestScaleOutECMP: two pepsal routers behind an edge router that spreads
// flows over them with a resilient ECMP next-hop group (issue #11). Flows
// spread over both boxes, byte-exact; stopping one daemon leaves the other
// box's flows untouched and new flows keep working (unsplit through the box
// without a daemon); withdrawing that box from the group moves only its own
// flows, so the other box's live flows still run and every new flow is split.
func TestScaleOutECMP(t *testing.T) {
	forEachRelay(t, func(t *testing.T, cfg suite) {
		topo, err := testbed.NewECMP("pit")
		if err != nil {
			t.Fatalf("test bed: %v", err)
		}
		t.Cleanup(func() {
			for _, pep := range topo.Peps {
				runCmdIn(pep, pepsalBin, "detach")
			}
			if err := topo.Close(); err != nil {
				t.Errorf("close test bed: %v", err)
			}
		})
		servers := []string{testbed.ECMPServerV4, testbed.ECMPServerV6}
		for _, s := range servers {
			transferServer(t, topo.Server, hostPort(s, 7900))
			peerServer(t, topo.Server, hostPort(s, 7901))
		}
		var daemons [2]*daemon
		for i, pep := range topo.Peps {
			daemons[i] = startPepsalIn(t, cfg, pep, "--iface", testbed.ECMPPepIf, "--drain-timeout", "1s")
		}
		// box says which pepsal router split a flow, from the address the
		// server saw; -1: the flow was not split.
		box := func(seen string) int {
			for i := range topo.Peps {
				if seen == testbed.PepServerV4(i) || seen == testbed.PepServerV6(i) {
					return i
				}
			}
			return -1
		}
		diverted := func(i int) uint64 {
			return statusIn(t, topo.Peps[i]).counter("syn_diverted")
		}

		// Byte-exact transfers, spread over both boxes.
		const transfers = 40
		var wg sync.WaitGroup
		errs := make(chan error, transfers)
		for n := range transfers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := transfer(topo.Client, hostPort(servers[n%2], 7900), int64(n)*7919, int64(n)*104729, uint64(n)); err != nil {
					errs <- fmt.Errorf("transfer %d: %w", n, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		d0, d1 := diverted(0), diverted(1)
		if d0 == 0 || d1 == 0 || d0+d1 != transfers {
			t.Fatalf("diverted SYNs: box 0 %d, box 1 %d; want both > 0 and %d in all", d0, d1, transfers)
		}

		// Long-lived flows on both boxes.
		type flow struct {
			c   *net.TCPConn
			box int
		}
		var live []flow
		for n := range 24 {
			c := mustDial(t, topo.Client, hostPort(servers[n%2], 7901))
			c.SetDeadline(time.Now().Add(60 * time.Second))
			seen, err := readLine(c)
			if err != nil || box(seen) < 0 {
				t.Fatalf("long-lived flow %d: server saw %q (%v), want a pepsal router", n, seen, err)
			}
			live = append(live, flow{c, box(seen)})
		}
		onBox := func(i int) (n int) {
			for _, f := range live {
				if f.box == i {
					n++
				}
			}
			return n
		}
		if onBox(0) == 0 || onBox(1) == 0 {
			t.Fatalf("long-lived flows: %d on box 0, %d on box 1; want both", onBox(0), onBox(1))
		}

		// Box 0's daemon stops: box 1's flows are untouched; box 0's are
		// reset after the drain time; new flows through box 0 go unsplit.
		if err := daemons[0].Stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Fatalf("stop box 0: %v", err)
		}
		for n, f := range live {
			err := echoOnce(f.c, "after box 0 stopped")
			switch {
			case f.box == 1 && err != nil:
				t.Errorf("flow %d on box 1 broke when box 0's daemon stopped: %v", n, err)
			case f.box == 0 && err == nil:
				t.Errorf("flow %d on box 0 still echoes after its daemon stopped (it should have been reset)", n)
			}
		}
		kinds := map[int]int{}
		for n := range 24 {
			seen := peerSeen(t, topo.Client, hostPort(servers[n%2], 7901))
			if seen == testbed.ECMPClientV4 || seen == testbed.ECMPClientV6 {
				kinds[-1]++ // through box 0, unsplit
			} else {
				kinds[box(seen)]++
			}
		}
		if kinds[-1] == 0 || kinds[1] == 0 || kinds[0] != 0 {
			t.Errorf("new flows with box 0's daemon stopped: %d unsplit, %d split by box 1, %d by box 0; want unsplit and box 1 only", kinds[-1], kinds[1], kinds[0])
		}

		// Box 0 leaves the next-hop group: only its flows move.
		if err := topo.Withdraw(0); err != nil {
			t.Fatal(err)
		}
		for n, f := range live {
			if f.box == 1 {
				if err := echoOnce(f.c, "after box 0 was withdrawn"); err != nil {
					t.Errorf("flow %d on box 1 broke when box 0 left the group: %v", n, err)
				}
			}
		}
		for n := range 12 {
			if seen := peerSeen(t, topo.Client, hostPort(servers[n%2], 7901)); box(seen) != 1 {
				t.Errorf("new flow %d after box 0 left the group: server saw %s, want box 1", n, seen)
			}
		}
		for _, f := range live {
			f.c.Close()
		}
	})
}
