// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"math"
	"testing"
	"time"
)

// lossRatio runs n frames through a model built like the bridge builds it.
func lossRatio(d Dir, seed uint64, n int) float64 {
	m := newLossModel(d, seed, streamUp)
	lost := 0
	for range n {
		if m.lose() {
			lost++
		}
	}
	return float64(lost) / float64(n)
}

func TestBernoulliLossRatio(t *testing.T) {
	const want = 0.01
	got := lossRatio(Dir{Loss: want}, 7, 100_000)
	if math.Abs(got-want) > want/10 {
		t.Fatalf("Bernoulli loss %.4f, want %.4f ±10%%", got, want)
	}
	t.Logf("Bernoulli 1%%: measured %.4f%% over 100k frames", got*100)
}

func TestGilbertElliottLossRatio(t *testing.T) {
	// Bursts of mean length 1/R = 4 frames entered with P = 0.5%:
	// pi_bad = 0.005/0.255 = 1.96%, loss = 0.0196*0.6 + 0.9804*0.001 = 1.275%.
	ge := GilbertElliott{P: 0.005, R: 0.25, H: 0.6, K: 0.001}
	want := ge.StationaryLoss()
	if math.Abs(want-0.012745) > 1e-5 {
		t.Fatalf("stationary loss %v, hand computation says 0.012745", want)
	}
	// Loss in bursts is correlated, so the ratio over n frames has ~2.6x the
	// standard deviation of Bernoulli's (about 6% of the mean at 100k frames);
	// 400k frames bring 10% to over 3 sigma and still take milliseconds.
	for _, seed := range []uint64{1, 2, 3} {
		got := lossRatio(Dir{GE: &ge}, seed, 400_000)
		if math.Abs(got-want) > want/10 {
			t.Fatalf("seed %d: GE loss %.4f, want %.4f ±10%%", seed, got, want)
		}
		t.Logf("GE seed %d: measured %.4f%%, stationary %.4f%%", seed, got*100, want*100)
	}
	// The losses must actually be bursty: P(loss | previous lost) >> loss.
	m := newLossModel(Dir{GE: &ge}, 1, streamUp)
	var prev bool
	var lostAfterLoss, afterLoss int
	for range 400_000 {
		l := m.lose()
		if prev {
			afterLoss++
			if l {
				lostAfterLoss++
			}
		}
		prev = l
	}
	if cond := float64(lostAfterLoss) / float64(afterLoss); cond < 5*want {
		t.Fatalf("P(loss|loss) = %.3f, not bursty", cond)
	}
}

func TestLossDeterminism(t *testing.T) {
	pattern := func(d Dir, seed uint64) []bool {
		m := newLossModel(d, seed, streamDown)
		out := make([]bool, 10_000)
		for i := range out {
			out[i] = m.lose()
		}
		return out
	}
	same := func(a, b []bool) bool {
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	for _, d := range []Dir{{Loss: 0.05}, {GE: &GilbertElliott{P: 0.01, R: 0.3, H: 0.5, K: 0.01}}} {
		if !same(pattern(d, 42), pattern(d, 42)) {
			t.Fatalf("%+v: same seed, different pattern", d)
		}
		if same(pattern(d, 42), pattern(d, 43)) {
			t.Fatalf("%+v: different seeds, same pattern", d)
		}
	}
	// The two directions draw from different streams.
	a, b := newLossModel(Dir{Loss: 0.5}, 1, streamDown), newLossModel(Dir{Loss: 0.5}, 1, streamUp)
	diff := 0
	for range 1000 {
		if a.lose() != b.lose() {
			diff++
		}
	}
	if diff == 0 {
		t.Fatal("down and up share a loss pattern")
	}
}

func TestSerializationSchedule(t *testing.T) {
	ms := time.Millisecond
	// 8 Mbit/s: a 1000-byte frame takes exactly 1 ms.
	p := newPipe(Dir{Delay: 10 * ms, RateBps: 8e6, QueueBytes: 2500}, 1, streamDown)
	steps := []struct {
		at      time.Duration
		n       int
		release time.Duration
		v       verdict
	}{
		{0, 1000, 11 * ms, pass},                          // idle link: 0 + 1 ms + 10 ms
		{0, 1000, 12 * ms, pass},                          // waits for the first: 1 + 1 + 10
		{500 * time.Microsecond, 1000, 13 * ms, pass},     // backlog 1500 B + 1000 fits in 2500
		{600 * time.Microsecond, 200, 0, dropQueue},       // backlog 2400 B + 200 > 2500
		{5 * ms, 500, 15*ms + 500*time.Microsecond, pass}, // idle since 3 ms: 5 + 0.5 + 10
		{5 * ms, 3000, 0, dropQueue},                      // 500 B waiting + 3000 > 2500
	}
	for i, s := range steps {
		rel, v := p.admit(s.at, s.n)
		if v != s.v || rel != s.release {
			t.Fatalf("step %d: got (%v, %v), want (%v, %v)", i, rel, v, s.release, s.v)
		}
	}
	// An empty queue always takes a frame, however small the limit.
	rel, v := p.admit(20*ms, 3000)
	if v != pass || rel != 33*ms {
		t.Fatalf("oversize frame on idle link: (%v, %v)", rel, v)
	}

	// 1514 B at 3 Mbit/s is 4037333.33 ns: the carried remainder must keep
	// the fractions from drifting the rate.
	q := newPipe(Dir{RateBps: 3e6, QueueBytes: 1 << 30}, 1, streamDown)
	var last time.Duration
	const frames = 100_000
	for range frames {
		last, _ = q.admit(0, 1514)
	}
	exact := float64(frames*1514*8) / 3e6 * 1e9
	if d := math.Abs(float64(last) - exact); d > 1 {
		t.Fatalf("after %d frames departure %v, exact %.0f ns (off by %.0f ns)", frames, last, exact, d)
	}

	// Unlimited rate: pure delay, no queue.
	u := newPipe(Dir{Delay: 300 * ms}, 1, streamDown)
	for i := range 10 {
		if rel, v := u.admit(time.Duration(i), 1514); v != pass || rel != 300*ms+time.Duration(i) {
			t.Fatalf("unlimited: (%v, %v)", rel, v)
		}
	}
}

func TestDefaultQueueBytes(t *testing.T) {
	geo, _ := Profile("geo")
	if got := geo.Down.DefaultQueueBytes(); got != 1_500_000 {
		t.Fatalf("geo down queue %d, want 1.5 MB (20 Mbit/s x 600 ms)", got)
	}
	if got := (Dir{RateBps: 1e6, Delay: time.Millisecond}).DefaultQueueBytes(); got != minQueueBytes {
		t.Fatalf("tiny BDP queue %d, want floor %d", got, minQueueBytes)
	}
}

func TestValidateAndProfiles(t *testing.T) {
	for _, name := range append(Profiles(), "", "GEO") {
		l, err := Profile(name)
		if err != nil {
			t.Fatalf("profile %q: %v", name, err)
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("profile %q invalid: %v", name, err)
		}
	}
	if _, err := Profile("mars"); err == nil {
		t.Fatal("unknown profile accepted")
	}
	bad := []Dir{
		{Delay: -1}, {RateBps: -1}, {QueueBytes: -1}, {Loss: 1.5}, {Loss: math.NaN()},
		{Loss: 0.1, GE: &GilbertElliott{}}, {GE: &GilbertElliott{P: 2}},
	}
	for _, d := range bad {
		if (Link{Up: d}).Validate() == nil {
			t.Fatalf("%+v accepted", d)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{
		"20M": 20e6, "5Mbit": 5e6, "100mbps": 100e6, "1.5G": 1.5e9, "64k": 64e3, "9600": 9600, "0": 0,
	} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Fatalf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1M", "NaN"} {
		if _, err := ParseRate(in); err == nil {
			t.Fatalf("ParseRate(%q) accepted", in)
		}
	}
}
