// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"math"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestScheduleOutages(t *testing.T) {
	var none *Schedule
	if st := none.at(time.Hour); st.down || st.step != -1 || st.burstLoss != 0 {
		t.Fatalf("nil schedule: %+v", st)
	}
	s := &Schedule{Outages: []Outage{{Start: 2 * time.Second, Len: 20 * time.Second}, {Start: 30 * time.Second, Len: ms}}}
	for _, c := range []struct {
		at   time.Duration
		down bool
	}{
		{0, false}, {2*time.Second - 1, false}, {2 * time.Second, true}, {22*time.Second - 1, true},
		{22 * time.Second, false}, {30 * time.Second, true}, {30*time.Second + ms, false}, {-time.Second, false},
	} {
		if st := s.at(c.at); st.down != c.down || st.step != -1 {
			t.Errorf("at %v: %+v, want down %v", c.at, st, c.down)
		}
	}
}

// The leo-handover profile's schedule, handover by handover: which step, when
// down, when in a loss burst.
func TestScheduleHandovers(t *testing.T) {
	s := LeoHandover().Schedule
	sec := time.Second
	for _, c := range []struct {
		at    time.Duration
		step  int
		down  bool
		burst float64
	}{
		{0, 0, false, 0},
		{15*sec - 1, 0, false, 0},
		{15 * sec, 1, false, 0.3}, // step 1 is entered through a loss burst
		{15*sec + 199*ms, 1, false, 0.3},
		{15*sec + 200*ms, 1, false, 0},
		{30 * sec, 2, true, 0}, // step 2 through 200 ms of outage
		{30*sec + 199*ms, 2, true, 0},
		{30*sec + 200*ms, 2, false, 0},
		{45*sec + 100*ms, 3, false, 0.3},
		{60*sec + 99*ms, 0, true, 0}, // step 0 through 100 ms of outage
		{60*sec + 100*ms, 0, false, 0},
		{75 * sec, 1, false, 0.3}, // and round again
	} {
		st := s.at(c.at)
		if st.step != c.step || st.down != c.down || st.burstLoss != c.burst {
			t.Errorf("at %v: %+v, want step %d down %v burst %v", c.at, st, c.step, c.down, c.burst)
		}
	}
}

func TestScheduleValidate(t *testing.T) {
	for name, p := range Profiles() {
		l, _ := Profile(p)
		if err := l.Validate(); err != nil {
			t.Fatalf("profile %d %s: %v", name, p, err)
		}
	}
	hv := func(st Step) *Schedule {
		return &Schedule{Handovers: &Handovers{Period: time.Second, Steps: []Step{st}}}
	}
	bad := []*Schedule{
		{Outages: []Outage{{Start: -1, Len: time.Second}}},
		{Outages: []Outage{{Start: 0, Len: 0}}},
		{Handovers: &Handovers{Period: 0, Steps: []Step{{}}}},
		{Handovers: &Handovers{Period: time.Second}},
		hv(Step{Outage: 600 * ms, Burst: 400 * ms}),
		hv(Step{BurstLoss: 1.5}),
		hv(Step{BurstLoss: math.NaN()}),
		hv(Step{Delay: -1}),
	}
	for i, s := range bad {
		if err := (Link{Schedule: s}).Validate(); err == nil {
			t.Errorf("bad schedule %d accepted: %+v", i, s)
		}
	}
}

func TestParseOutages(t *testing.T) {
	s, err := ParseOutages(strings.NewReader("# rain\n2s 20s\n\n  60s 500ms # short\nevery 30s 1s from 10s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Outages) != 2 || s.Outages[0] != (Outage{2 * time.Second, 20 * time.Second}) || s.Outages[1] != (Outage{60 * time.Second, 500 * ms}) {
		t.Fatalf("outages %+v", s.Outages)
	}
	// 10-11 s is inside the fixed 2-22 s outage; 40 s is the next periodic one.
	if s.at(39*time.Second).down || !s.at(40*time.Second+999*ms).down || s.at(41*time.Second).down || !s.at(70*time.Second).down {
		t.Fatalf("periodic outage not at 10s, 40s, 70s...: %+v", s.Handovers)
	}
	if p, err := ParseOutages(strings.NewReader("every 5s 1s")); err != nil || p.at(4*time.Second).down || !p.at(5*time.Second).down {
		t.Fatalf("every without from starts at one period: %+v, %v", p, err)
	}
	for _, in := range []string{"2s", "2s 20s 3s", "x 1s", "1s -1s", "every 1s", "every 1s 2s", "every 5s 1s\nevery 6s 1s", "every 5s 1s to 2s"} {
		if _, err := ParseOutages(strings.NewReader(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// A frame is lost to an outage if the link is down when it comes or when it
// would arrive; what leaves before and comes after goes through.
func TestPipeOutage(t *testing.T) {
	l := Link{Down: Dir{Delay: 10 * ms}, Schedule: &Schedule{Outages: []Outage{{Start: 100 * ms, Len: 50 * ms}}}}
	p := newPipe(l.Down, 1, streamDown)
	p.sched = newPipeSchedule(l.Schedule, l.Down, false, 1, streamDown)
	for _, c := range []struct {
		at time.Duration
		v  verdict
	}{
		{89 * ms, pass},
		{90 * ms, dropOutage},  // arrives at 100 ms, when the link is down
		{120 * ms, dropOutage}, // sent while down
		{140 * ms, dropOutage},
		{150 * ms, pass},
	} {
		if _, v := p.admit(c.at, 100); v != c.v {
			t.Errorf("frame at %v: verdict %v, want %v", c.at, v, c.v)
		}
	}
	// Arm moves the schedule: the same instants are now before the outage.
	p.sched.anchor = time.Second
	if _, v := p.admit(1100*ms+20*ms, 100); v != dropOutage {
		t.Errorf("after re-arming, 120 ms into the schedule: %v", v)
	}

	// WaitArm: nothing happens until the first Arm.
	l.Schedule.WaitArm = true
	w := newPipe(l.Down, 1, streamDown)
	w.sched = newPipeSchedule(l.Schedule, l.Down, false, 1, streamDown)
	if _, v := w.admit(120*ms, 100); v != pass {
		t.Errorf("unarmed, at the outage's time: %v", v)
	}
	w.sched.anchor, w.sched.armed = 200*ms, true
	if _, v := w.admit(320*ms, 100); v != dropOutage {
		t.Errorf("armed at 200 ms, 120 ms later: %v", v)
	}
}

// A handover changes delay and rate; frames never overtake one another when
// the delay shrinks; the burst loses about its share.
func TestPipeHandover(t *testing.T) {
	sched := &Schedule{Handovers: &Handovers{First: time.Second, Period: time.Second, Steps: []Step{
		{Delay: 50 * ms, DownRate: 8e6},
		{Burst: 500 * ms, BurstLoss: 0.3, Delay: 10 * ms, DownRate: 16e9},
	}}}
	base := Dir{Delay: 300 * ms, RateBps: 1e6}
	p := newPipe(base, 1, streamDown)
	p.sched = newPipeSchedule(sched, base, false, 1, streamDown)
	// Step 0: 50 ms and 8 Mbit/s (1000 B = 1 ms), not the link's own 300 ms.
	if rel, v := p.admit(0, 1000); v != pass || rel != 51*ms {
		t.Fatalf("step 0: (%v, %v), want (51ms, pass)", rel, v)
	}
	// A queue at 8 Mbit/s, then the handover to 10 ms: the next frame may
	// not arrive before the last one queued (999 + 5 + 50 ms).
	var last time.Duration
	for range 5 {
		last, _ = p.admit(999*ms, 1000)
	}
	if last != 1054*ms {
		t.Fatalf("last frame before the handover released at %v, want 1.054s", last)
	}
	lost, n := 0, 20_000
	for i := range n {
		// 25 us apart over the 500 ms burst: at 16 Gbit/s (500 ns per
		// 1000 B) the queue never fills.
		rel, v := p.admit(time.Second+time.Duration(i)*25*time.Microsecond, 1000)
		switch {
		case v == dropBurst:
			lost++
		case v != pass:
			t.Fatalf("frame %d: %v", i, v)
		case rel < last:
			t.Fatalf("frame %d overtook: released at %v, before %v", i, rel, last)
		default:
			last = rel
		}
	}
	if r := float64(lost) / float64(n); math.Abs(r-0.3) > 0.03 {
		t.Errorf("burst lost %.3f, want 0.3 ± 0.03", r)
	}
	// After the burst, the step's own delay: 10 ms + 500 ns at 16 Gbit/s.
	if rel, v := p.admit(1600*ms, 1000); v != pass || rel != 1600*ms+10*ms+500 {
		t.Fatalf("after the burst: (%v, %v)", rel, v)
	}
}

// An empty schedule changes nothing, the loss pattern included: existing
// profiles and seeds behave as before schedules existed.
func TestEmptyScheduleSamePattern(t *testing.T) {
	d := Dir{Delay: 30 * ms, RateBps: 10e6, Loss: 0.05}
	a := newPipe(d, 9, streamUp)
	b := newPipe(d, 9, streamUp)
	b.sched = newPipeSchedule(&Schedule{}, d, true, 9, streamUp)
	for i := range 10_000 {
		at := time.Duration(i) * 700 * time.Microsecond
		ra, va := a.admit(at, 1200)
		rb, vb := b.admit(at, 1200)
		if ra != rb || va != vb {
			t.Fatalf("frame %d: (%v, %v) without a schedule, (%v, %v) with an empty one", i, ra, va, rb, vb)
		}
	}
}

// The geo-ge chain with a fixed seed: about 1 % loss, and in bursts.
func TestGeoGELossAndBursts(t *testing.T) {
	l, err := Profile("geo-ge")
	if err != nil || l.Down.GE == nil || l.Up.GE == nil {
		t.Fatalf("geo-ge: %+v, %v", l, err)
	}
	if m := l.Down.GE.StationaryLoss(); m < 0.009 || m > 0.011 {
		t.Fatalf("stationary loss %.4f, want about 1%%", m)
	}
	m := newLossModel(l.Down, l.Seed, streamDown)
	const n = 1_000_000
	var lost, runs, afterLoss, lostAfterLoss int
	prev := false
	for range n {
		x := m.lose()
		if x {
			lost++
			if !prev {
				runs++
			}
		}
		if prev {
			afterLoss++
			if x {
				lostAfterLoss++
			}
		}
		prev = x
	}
	mean := float64(lost) / n
	if mean < 0.009 || mean > 0.0115 {
		t.Errorf("measured loss %.4f over %d frames, want 0.9-1.15%%", mean, n)
	}
	// Bernoulli loss of 1 % would give runs of 1.01 frames and
	// P(loss|loss) = 1 %; the bad state (50 % loss, 10 frames) gives about 2
	// and 40 %.
	if runLen, cond := float64(lost)/float64(runs), float64(lostAfterLoss)/float64(afterLoss); runLen < 1.5 || cond < 0.2 {
		t.Errorf("losses not bursty: mean run %.2f frames, P(loss|loss) %.3f", runLen, cond)
	} else {
		t.Logf("geo-ge: loss %.3f%%, mean run %.2f frames, P(loss|loss) %.3f", 100*mean, runLen, cond)
	}
}
