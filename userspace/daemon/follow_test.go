// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// script is a Reattach that answers the next of its steps (the last one
// again once they are used up), and counts its calls.
type script struct {
	mu    sync.Mutex
	steps [][]loader.Placed
	errs  []error
	calls int
}

func (s *script) reattach() ([]loader.Placed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.steps)-1)
	s.calls++
	var err error
	if i < len(s.errs) {
		err = s.errs[i]
	}
	if err != nil {
		return nil, err
	}
	return s.steps[i], nil
}

func (s *script) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// TestFollowerBooks: losses and returns are counted as the reconciles see
// them, a deletion and creation missed between two reconciles included,
// and the log says each.
func TestFollowerBooks(t *testing.T) {
	on := func(idx int, attached bool) []loader.Placed {
		return []loader.Placed{{Name: "ppp0", Ifindex: idx, On: true, Attached: attached}}
	}
	gone := []loader.Placed{{Name: "ppp0"}}
	s := &script{steps: [][]loader.Placed{
		on(5, true),  // at start
		on(5, false), // nothing changed
		gone,         // deleted
		gone,         // still gone
		on(7, true),  // back
		on(9, true),  // deleted and back between two reconciles
		{{Name: "ppp0", Ifindex: 9, On: true, Attached: true}}, // its classifier was removed, and put back
		{{Name: "ppp0", Ifindex: 9, Err: errors.New("attach classifier to ppp0: no room")}},
	}, errs: []error{nil, nil, nil, errors.New("lock: interrupted")}}
	var logs bytes.Buffer
	f := newFollower(slog.New(slog.NewTextHandler(&logs, nil)), s.reattach)
	want := []report.IfaceHealth{
		{Name: "ppp0", Ifindex: 5, Attached: true},
		{Name: "ppp0", Ifindex: 5, Attached: true},
		{Name: "ppp0", Losses: 1},
		{Name: "ppp0", Losses: 1}, // the reconcile failed: nothing changes
		{Name: "ppp0", Ifindex: 7, Attached: true, Losses: 1, Reattached: 1},
		{Name: "ppp0", Ifindex: 9, Attached: true, Losses: 2, Reattached: 2},
		{Name: "ppp0", Ifindex: 9, Attached: true, Losses: 3, Reattached: 3},
		{Name: "ppp0", Ifindex: 9, Losses: 4, Reattached: 3, Error: "attach classifier to ppp0: no room"},
	}
	for i, w := range want {
		f.reconcile(i == 0)
		h := f.health()
		if len(h) != 1 {
			t.Fatalf("step %d: health %+v", i, h)
		}
		h[0].SinceSeconds = 0
		if h[0] != w {
			t.Errorf("step %d: %+v, want %+v", i, h[0], w)
		}
	}
	for _, line := range []string{"interface lost", "interface back: classifier re-attached", "cannot reconcile the interfaces", "cannot attach the classifier"} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("no %q in the log:\n%s", line, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "interface lost"); n != 4 {
		t.Errorf("%d losses logged, want 4:\n%s", n, logs.String())
	}
}

// TestFollowerWaits: an interface absent at start is said to be waited
// for; when it appears it is attached, which is no return.
func TestFollowerWaits(t *testing.T) {
	s := &script{steps: [][]loader.Placed{
		{{Name: "wg0"}},
		{{Name: "wg0", Ifindex: 12, On: true, Attached: true}},
	}}
	var logs bytes.Buffer
	f := newFollower(slog.New(slog.NewTextHandler(&logs, nil)), s.reattach)
	f.reconcile(true)
	if h := f.health(); h[0].Attached || !strings.Contains(logs.String(), "waiting for interface") {
		t.Errorf("at start: %+v\n%s", h, logs.String())
	}
	f.reconcile(false)
	if h := f.health()[0]; !h.Attached || h.Losses != 0 || h.Reattached != 0 || !strings.Contains(logs.String(), "interface appeared") {
		t.Errorf("appeared: %+v\n%s", h, logs.String())
	}
}

// TestFollowerBackstop: without any link event the follower reconciles
// every period (a lost event delays a re-attachment, never loses it), and
// stop ends it.
func TestFollowerBackstop(t *testing.T) {
	s := &script{steps: [][]loader.Placed{{{Name: "ppp0", Ifindex: 3, On: true}}}}
	f := newFollower(slog.New(slog.DiscardHandler), s.reattach)
	f.every = 10 * time.Millisecond
	stop := f.start()
	deadline := time.Now().Add(10 * time.Second)
	for s.count() < 5 {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("%d reconciles in 10 s with a 10 ms period", s.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	n := s.count()
	time.Sleep(50 * time.Millisecond)
	if s.count() != n {
		t.Errorf("reconciles went on after stop: %d, then %d", n, s.count())
	}
}

// TestFollowerRelevantEvents: a link event kicks a reconcile only for a
// followed name, or the ifindex of a followed interface (renamed).
func TestFollowerRelevantEvents(t *testing.T) {
	s := &script{steps: [][]loader.Placed{{{Name: "ppp0", Ifindex: 3, On: true}}}}
	f := newFollower(slog.New(slog.DiscardHandler), s.reattach)
	f.reconcile(true)
	for _, c := range []struct {
		name  string
		index int
		want  bool
	}{{"ppp0", 8, true}, {"renamed", 3, true}, {"eth1", 4, false}, {"", 0, false}} {
		if got := f.follows(c.name, c.index); got != c.want {
			t.Errorf("follows(%q, %d) = %v, want %v", c.name, c.index, got, c.want)
		}
	}
}

// TestIfaceMetrics: one series per followed interface; none without.
func TestIfaceMetrics(t *testing.T) {
	c := newIfaceCollector(func() []report.IfaceHealth {
		return []report.IfaceHealth{
			{Name: "eth0", Ifindex: 2, Attached: true, Losses: 3, Reattached: 3},
			{Name: "ppp0", Losses: 1},
		}
	})
	want := `
# HELP pepsal_interface_attached 1 when the classifier is on the interface of this name (--iface, --return-iface), so its new connections are split; 0 while there is no such interface or the classifier could not be attached.
# TYPE pepsal_interface_attached gauge
pepsal_interface_attached{iface="eth0"} 1
pepsal_interface_attached{iface="ppp0"} 0
# HELP pepsal_interface_losses_total Times the interface of this name went (deleted, or its classifier removed).
# TYPE pepsal_interface_losses_total counter
pepsal_interface_losses_total{iface="eth0"} 3
pepsal_interface_losses_total{iface="ppp0"} 1
# HELP pepsal_interface_reattached_total Times the daemon put the classifier back on an interface of this name created again.
# TYPE pepsal_interface_reattached_total counter
pepsal_interface_reattached_total{iface="eth0"} 3
pepsal_interface_reattached_total{iface="ppp0"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	if n := testutil.CollectAndCount(newIfaceCollector(nil)); n != 0 {
		t.Errorf("%d series without followed interfaces", n)
	}
}
