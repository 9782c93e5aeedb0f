// SPDX-License-Identifier: Apache-2.0

package loader

// The classifier and SYN cookies: when the proxy's listener answers a
// diverted SYN with a cookie it keeps no request socket, and the client's
// ACK must still reach it. These cases run the real sk_lookup program in the
// test namespace, as an attachment has it: the classifier's own socket
// lookup meets the proxy's listener through it.

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// attachSteer loads the steering program on e's maps and attaches it to the
// test namespace until the end of the test.
func (e *classifyEnv) attachSteer(t *testing.T) {
	t.Helper()
	spec, err := loadSteer()
	if err != nil {
		t.Fatal(err)
	}
	steer := loadForTest(t, spec, e.coll)
	ns, err := os.Open(e.ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), steer.Programs["pepsal_steer"])
	if err != nil {
		t.Fatalf("attach sk_lookup: %v", err)
	}
	t.Cleanup(func() { l.Close() })
}

// monotonicNow is bpf_ktime_get_ns's clock.
func monotonicNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// divertedAt records p's SYN as diverted age ago (as divert_syn does), until
// the end of the test.
func (e *classifyEnv) divertedAt(t *testing.T, p pkt, age time.Duration) {
	t.Helper()
	e.put(t, "pepsal_diverted", flowKeyOf(p), classifyDivertInfo{Tos: uint32(p.tos), SynNs: monotonicNow(t) - uint64(age)})
	t.Cleanup(func() { e.del(t, "pepsal_diverted", flowKeyOf(p)) })
}

// hasDiverted says whether p's flow has a pepsal_diverted entry.
func (e *classifyEnv) hasDiverted(t *testing.T, p pkt) bool {
	t.Helper()
	var info classifyDivertInfo
	err := e.coll.Maps["pepsal_diverted"].Lookup(flowKeyOf(p), &info)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// cookieTests runs cookieCases of every family with the steering program
// attached, once (a second one would find the socket already assigned).
func cookieTests(t *testing.T, e *classifyEnv) {
	t.Run("cookie", func(t *testing.T) {
		e.attachSteer(t)
		for _, f := range testFamilies {
			cookieCases(t, e, f)
		}
	})
}

// cookieCases: packets of diverted flows that no socket but the proxy's
// listener matches.
func cookieCases(t *testing.T, e *classifyEnv, f testFamily) {
	ack := f.syn
	ack.flags = tcpACK
	fresh := func(t *testing.T, p *pkt) {
		e.withListener(f)(t, p)
		e.divertedAt(t, *p, time.Second)
	}
	steered := map[string]uint64{"ack_cookie_steered": 1, "steer_assigned": 1}
	e.check(t, tcase{name: f.name + "/ack_cookie_steered", p: ack, want: steered, mark: true, setup: fresh})
	data := ack
	data.payload = 100
	e.check(t, tcase{name: f.name + "/ack_data_cookie_steered", p: data, want: steered, mark: true, setup: fresh})
	finAck := ack
	finAck.flags |= tcpFIN
	e.check(t, tcase{name: f.name + "/fin_ack_cookie_steered", p: finAck, want: steered, mark: true, setup: fresh})
	rst := ack
	rst.flags = tcpRST
	e.check(t, tcase{name: f.name + "/rst_cookie_local", p: rst, want: map[string]uint64{"rst_cookie_local": 1, "steer_assigned": 1}, mark: true, setup: fresh})

	// Not the proxy's: no entry, or a SYN-ACK (a reply to a dial), or a bare FIN.
	e.check(t, tcase{name: f.name + "/ack_not_diverted_forwarded", p: ack, want: one("pkt_forwarded"), setup: e.withListener(f)})
	synAck := ack
	synAck.flags = tcpSYN | tcpACK
	e.check(t, tcase{name: f.name + "/synack_diverted_forwarded", p: synAck, want: map[string]uint64{"pkt_forwarded": 1, "steer_assigned": 1}, setup: fresh})
	fin := ack
	fin.flags = tcpFIN
	e.check(t, tcase{name: f.name + "/fin_diverted_forwarded", p: fin, want: map[string]uint64{"pkt_forwarded": 1, "steer_assigned": 1}, setup: fresh})
	// The daemon is gone: its listener left pepsal_listen, nothing can check the cookie.
	e.check(t, tcase{name: f.name + "/ack_cookie_no_listener_forwarded", p: ack, want: map[string]uint64{"pkt_forwarded": 1, "steer_no_listener": 1},
		setup: func(t *testing.T, p *pkt) { e.divertedAt(t, *p, time.Second) }})

	// A SYN diverted longer ago than any cookie lives, never accepted: the
	// entry is forgotten and the flow forwarded.
	e.check(t, tcase{name: f.name + "/ack_cookie_stale_forwarded", p: ack, want: map[string]uint64{"cookie_stale_forwarded": 1, "steer_assigned": 1},
		setup: func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			e.divertedAt(t, *p, 121*time.Second)
		}})
	t.Run(f.name+"/stale_entry_deleted", func(t *testing.T) {
		if e.hasDiverted(t, ack) {
			t.Error("a stale pepsal_diverted entry stays after its flow was forwarded")
		}
	})

	// A SYN that is not diverted (here: the proxy is full) forgets an
	// earlier diverted SYN of the same tuple, so its flow's ACKs follow
	// it to the server, not to the proxy's listener (check's
	// checkDiverted asserts that no entry is left).
	e.check(t, tcase{name: f.name + "/syn_bypassed_forgets_diverted_syn", p: f.syn, want: one("syn_bypass_full"),
		setup: func(t *testing.T, p *pkt) {
			fresh(t, p)
			e.put(t, "pepsal_admit", uint32(0), classifyAdmission{Full: 1})
			t.Cleanup(func() { e.put(t, "pepsal_admit", uint32(0), classifyAdmission{}) })
		}})
}
