// SPDX-License-Identifier: Apache-2.0

package procid

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStartTimeSkipsOddCommandNames(t *testing.T) {
	// Field 22 is 4242; the command name holds spaces and a ") ".
	line := "77 (pep) sal x) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10 18446744073709551615"
	if got, err := parseStartTime(line); err != nil || got != 4242 {
		t.Errorf("parseStartTime = %d, %v; want 4242", got, err)
	}
	if _, err := parseStartTime("77 (pepsal) S 1"); err == nil {
		t.Error("a truncated line parsed")
	}
}

func TestAliveTellsAReusedPidApart(t *testing.T) {
	me, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !me.Alive() {
		t.Fatalf("this process (%v) is not alive", me)
	}
	reused := me
	reused.Start++ // same pid, another process
	if reused.Alive() {
		t.Error("a pid with another start time counts as the process")
	}
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	if (ID{PID: child.Process.Pid, Start: me.Start}).Alive() {
		t.Error("an exited process counts as alive")
	}
	if (ID{}).Alive() {
		t.Error("the zero ID counts as alive")
	}
}

func TestParseReadsString(t *testing.T) {
	id := ID{PID: 4711, Start: 123456789}
	if got, err := Parse(id.String() + "\n"); err != nil || got != id {
		t.Errorf("Parse(%q) = %v, %v; want %v", id.String(), got, err, id)
	}
	for _, bad := range []string{"", "12", "12 x", "x 12", "1 2 3"} {
		if got, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", bad, got)
		}
	}
}

func TestLockExcludes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "made")
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		u, err := Lock(dir)
		if err != nil {
			t.Error(err)
			u = func() {}
		}
		got <- u
	}()
	select {
	case u := <-got:
		u()
		t.Fatal("a second Lock went through while the first was held")
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case u := <-got:
		u()
	case <-time.After(10 * time.Second):
		t.Fatal("the second Lock still waits after the first was released")
	}
}
