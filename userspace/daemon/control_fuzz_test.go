// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/userspace/internal/nettest"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
)

// controlAllocMax bounds what one client of the control socket makes the
// daemon allocate, whatever it sends: a request line is at most
// ControlLineMax (read through a small buffer, then copied once); the
// answers here are the small ones, info and an empty table. (Measured:
// under 10 KiB.)
const controlAllocMax = 4 * ControlLineMax

// controlAnswer is what the server must write to a client admitted to
// ask, which sends stream: nothing without a newline within the first
// ControlLineMax+1 bytes, else the answer to the line.
func controlAnswer(stream []byte) (line string, answered bool) {
	stream = stream[:min(len(stream), ControlLineMax+1)]
	i := bytes.IndexByte(stream, '\n')
	if i < 0 {
		return "", false
	}
	return strings.TrimSpace(string(stream[:i])), true
}

// checkAnswer checks out, the one line the server wrote for line.
func checkAnswer(t *testing.T, line string, out []byte) {
	if bytes.IndexByte(out, '\n') != len(out)-1 {
		t.Fatalf("request %q: answer is not one line: %q", line, out)
	}
	switch line {
	case "info":
		var i report.DaemonInfo
		if err := json.Unmarshal(out, &i); err != nil || i.PID != testInfo.PID || i.Goroutines == 0 {
			t.Fatalf("info answered %q (%v)", out, err)
		}
	case "conns":
		var conns []report.ConnInfo
		if err := json.Unmarshal(out, &conns); err != nil || len(conns) != 0 {
			t.Fatalf("conns answered %q (%v)", out, err)
		}
	default:
		if string(out) != `{"error":"unknown request"}`+"\n" {
			t.Fatalf("request %q answered %q", line, out)
		}
	}
}

// serveOne runs what Serve runs for one client that sends data, then
// fill bytes forever if endless; cost is what the process allocated
// meanwhile.
func serveOne(s *ControlServer, data []byte, endless bool, fill byte) (c *nettest.MemConn, admitted bool, cost uint64) {
	c = &nettest.MemConn{In: data, Endless: endless, Fill: fill}
	c.Out.Grow(16 << 10) // the client's buffer is not the server's cost
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if admitted = s.admit(c); admitted {
		s.answer(c)
	}
	runtime.ReadMemStats(&m1)
	return c, admitted, m1.TotalAlloc - m0.TotalAlloc
}

// FuzzControlRequest drives the control server's handling of one client
// (admit, then answer: what Serve runs per connection) with a fuzzed
// caller (uid, gid) and request: pad fill bytes, data, then the end of
// the stream or fill bytes forever (long requests without long inputs).
// A caller Admits refuses is told so in one line and none of its bytes is
// read; an admitted one has at most ControlLineMax+1 bytes read and gets
// the answer its line asks for, or nothing if no line ends within the
// bound; the server never allocates more than controlAllocMax for it.
func FuzzControlRequest(f *testing.F) {
	euid := uint32(os.Geteuid())
	for _, req := range []string{"info\n", "conns\n", " info \r\n", "status\n", "info", "\n", "info\nconns\n"} {
		f.Add([]byte(req), uint16(0), byte(0), false, euid, uint32(0), false)
	}
	f.Add([]byte("\n"), uint16(ControlLineMax), byte('a'), false, uint32(0), uint32(0), false)
	f.Add([]byte("\n"), uint16(ControlLineMax+1), byte('a'), false, uint32(0), uint32(0), false)
	f.Add([]byte("info"), uint16(0), byte('o'), true, uint32(0), uint32(0), false)
	f.Add([]byte("in"), uint16(0), byte('\n'), true, uint32(0), uint32(0), false)
	f.Add([]byte("info\n"), uint16(0), byte(0), false, euid+1, uint32(4242), true)
	f.Add([]byte("info\n"), uint16(3), byte(' '), true, euid+1, uint32(4243), true)
	s := &ControlServer{Info: func() report.DaemonInfo { return testInfo }, Table: proxy.NewTable(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	// What the first answers cost once (the JSON encoders' caches, the
	// runtime metrics' tables) is not any client's.
	for _, req := range []string{"info\n", "conns\n", "x\n"} {
		s.Peer = func(net.Conn) (sockopt.Peer, error) { return sockopt.Peer{}, nil }
		s.answer(&nettest.MemConn{In: []byte(req)})
	}
	f.Fuzz(func(t *testing.T, data []byte, pad uint16, fill byte, endless bool, uid, gid uint32, groupSet bool) {
		data = append(bytes.Repeat([]byte{fill}, int(min(pad, 2*ControlLineMax))), data[:min(len(data), 2*ControlLineMax)]...)
		peer := sockopt.Peer{UID: uid, GID: gid, PID: 1}
		s.Group = ControlGroup{Name: "ops", GID: 4242, Set: groupSet}
		s.Peer = func(net.Conn) (sockopt.Peer, error) { return peer, nil }
		c, admitted, cost := serveOne(s, data, endless, fill)
		for try := 1; try < 3 && cost > controlAllocMax; try++ {
			_, _, again := serveOne(s, data, endless, fill) // TotalAlloc is the process's: the least of 3 runs is the server's
			cost = min(cost, again)
		}
		if cost > controlAllocMax {
			t.Fatalf("one client (%d bytes, endless %v) cost %d bytes, more than %d", len(data), endless, cost, controlAllocMax)
		}
		if !c.Closed {
			t.Fatal("the client's connection was left open")
		}
		if want := uid == 0 || uid == euid || groupSet && gid == 4242; admitted != want {
			t.Fatalf("uid %d gid %d (group set %v): admitted %v", uid, gid, groupSet, admitted)
		}
		if !admitted {
			if c.Consumed != 0 || !strings.HasPrefix(c.Out.String(), `{"error":"permission denied: `) {
				t.Fatalf("a refused client: %d bytes read, answered %q", c.Consumed, c.Out.String())
			}
			return
		}
		if c.Consumed > ControlLineMax+1 {
			t.Fatalf("%d bytes of a request read, more than %d", c.Consumed, ControlLineMax+1)
		}
		stream := append(bytes.Clone(data), bytes.Repeat([]byte{fill}, ControlLineMax+1)...)
		if !endless {
			stream = data
		}
		line, answered := controlAnswer(stream)
		if !answered {
			if c.Out.Len() != 0 {
				t.Fatalf("no request line, answered %q", c.Out.String())
			}
			return
		}
		checkAnswer(t, line, c.Out.Bytes())
	})
}
