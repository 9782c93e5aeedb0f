// SPDX-License-Identifier: Apache-2.0

// Package linkemu emulates a satellite link in userspace: an L2 bridge between
// two interfaces of one namespace that delays, rate-limits, queues and drops
// frames. It exists because the test kernel has neither netem nor fq.
//
// A link may also misbehave over time (Link.Schedule): outages during which
// it carries nothing in either direction, and periodic handovers that take
// it down briefly and/or lose a burst of frames, then change its delay and
// rate. Loss may come in bursts from a Gilbert-Elliott chain (Dir.GE).
//
// Profiles (Profile):
//   - geo: a geostationary link, 600 ms RTT, 20 Mbit/s down, 5 up.
//   - geo-lossy: geo with 1 % random loss each way.
//   - leo: 40 ms RTT, 100/20 Mbit/s, 0.5 % random loss.
//   - geo-fade: geo with one 20 s outage starting 2 s after the schedule's
//     start (GeoFade takes another start; a bench calls Bridge.Arm when its
//     transfer starts). Rain fades on Ka-band earth-space paths last from
//     seconds to tens of minutes, with durations roughly lognormal; measured
//     in Madrid over seven years in "Fade and interfade duration
//     characteristics in a slant-path Ka-band link" (Garcia-Rubia et al.,
//     IEEE TAP, https://discovery.researcher.life/article/fade-and-interfade-duration-characteristics-in-a-slant-path-lt-italic-gt-ka-lt-italic-gt-band-link/673db63078c13170bf507c9adc21f644),
//     and modelled in ITU-R P.1623 (https://www.itu.int/rec/R-REC-P.1623).
//     20 s is a short fade, long enough to push TCP's retransmission timer
//     through several back-offs.
//   - leo-handover: a Starlink-like link whose terminal changes satellite
//     every 15 s: minimum RTT steps between 40 and 60 ms at each change, the
//     rate changes too, and each change costs 100-200 ms of outage or a burst
//     of 30 % loss. The 15 s interval and the latency steps at it (30 to
//     80 ms at worst, with loss) are G. Huston's measurements, "A transport
//     protocol's view of Starlink" (APNIC blog, May 2024,
//     https://blog.apnic.net/2024/05/17/a-transport-protocols-view-of-starlink/;
//     summarised at https://www.theregister.com/2024/05/22/starlink_tcp_performance_evaluation/).
//   - geo-ge: geo with Gilbert-Elliott loss each way: about 1 % of frames
//     lost, in bursts of about 10 frames in the bad state (p 0.2 %, r 10 %,
//     50 % loss when bad, 0.05 % when good): the two-state model of
//     Gilbert (1960) and Elliott (1963) as netem's "loss gemodel" describes
//     it (https://man7.org/linux/man-pages/man8/tc-netem.8.html).
package linkemu

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// GilbertElliott is a two-state Markov loss model. Unlike netem's gemodel
// arguments, H and K are loss probabilities (netem calls them 1-h and 1-k).
type GilbertElliott struct {
	P float64 // per-frame probability of going good -> bad
	R float64 // per-frame probability of going bad -> good
	H float64 // loss probability while bad
	K float64 // loss probability while good
}

// StationaryLoss is the long-run loss ratio: pi_bad*H + pi_good*K with
// pi_bad = P/(P+R).
func (g GilbertElliott) StationaryLoss() float64 {
	if g.P+g.R == 0 {
		return g.K // never leaves the good state it starts in
	}
	bad := g.P / (g.P + g.R)
	return bad*g.H + (1-bad)*g.K
}

// Dir configures one direction of the link.
type Dir struct {
	// Delay is the one-way propagation delay added after serialization.
	Delay time.Duration
	// RateBps is the serialization rate in bits per second of Ethernet frame
	// bytes (no preamble/FCS); 0 means unlimited.
	RateBps int64
	// QueueBytes bounds the bytes waiting for serialization (tail drop). 0
	// picks DefaultQueueBytes. Ignored when RateBps is 0.
	QueueBytes int
	// Loss is a Bernoulli per-frame loss probability.
	Loss float64
	// GE, if set, replaces Loss with a Gilbert-Elliott model.
	GE *GilbertElliott
}

// Link is both directions. Down carries frames from the router side toward
// the client side, Up the reverse.
type Link struct {
	Down, Up Dir
	// Seed makes the loss pattern reproducible for a given frame sequence.
	Seed uint64
	// Schedule, if set, takes the link down and changes it over time.
	Schedule *Schedule
}

// minQueueBytes keeps short-delay links from getting a queue smaller than a
// TSO burst, which would make them drop on every cwnd increase.
const minQueueBytes = 64 << 10

// DefaultQueueBytes is one bandwidth-delay product, RateBps x 2 x Delay (the
// RTT if the other direction has the same delay), but at least 64 KiB. One BDP
// of buffering is what keeps a single Reno/CUBIC flow at full utilisation
// across its window reductions, so goodput tests measure the rate, not the AQM.
func (d Dir) DefaultQueueBytes() int {
	bdp := float64(d.RateBps) * 2 * d.Delay.Seconds() / 8
	if bdp > math.MaxInt32 {
		return math.MaxInt32
	}
	return max(int(bdp), minQueueBytes)
}

func (d Dir) queueLimit() int {
	if d.QueueBytes > 0 {
		return d.QueueBytes
	}
	return d.DefaultQueueBytes()
}

// Validate rejects configurations the emulator cannot honour.
func (d Dir) Validate() error {
	prob := func(name string, p float64) error {
		if math.IsNaN(p) || p < 0 || p > 1 {
			return fmt.Errorf("%s %v not in [0,1]", name, p)
		}
		return nil
	}
	var errs []error
	if d.Delay < 0 {
		errs = append(errs, fmt.Errorf("negative delay %v", d.Delay))
	}
	if d.RateBps < 0 {
		errs = append(errs, fmt.Errorf("negative rate %d", d.RateBps))
	}
	if d.QueueBytes < 0 {
		errs = append(errs, fmt.Errorf("negative queue %d", d.QueueBytes))
	}
	errs = append(errs, prob("loss", d.Loss))
	if d.GE != nil {
		if d.Loss != 0 {
			errs = append(errs, errors.New("both Loss and GE set"))
		}
		errs = append(errs, prob("GE p", d.GE.P), prob("GE r", d.GE.R),
			prob("GE h", d.GE.H), prob("GE k", d.GE.K))
	}
	return errors.Join(errs...)
}

// Validate checks both directions.
func (l Link) Validate() error {
	var errs []error
	if err := l.Down.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("down: %w", err))
	}
	if err := l.Up.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("up: %w", err))
	}
	if err := l.Schedule.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("schedule: %w", err))
	}
	return errors.Join(errs...)
}

// Profiles lists the names Profile accepts.
func Profiles() []string {
	return []string{"none", "geo", "geo-lossy", "leo", "geo-fade", "leo-handover", "geo-ge"}
}

// geoLink is the GEO profile: 600 ms RTT, 20 Mbit/s down, 5 up.
func geoLink() Link {
	return Link{
		Down: Dir{Delay: 300 * time.Millisecond, RateBps: 20e6},
		Up:   Dir{Delay: 300 * time.Millisecond, RateBps: 5e6},
		Seed: 1,
	}
}

// GeoFadeOutage is how long the geo-fade profile's link stays down.
const GeoFadeOutage = 20 * time.Second

// GeoFade is the geo link with one GeoFadeOutage outage starting at start
// after the schedule's start.
func GeoFade(start time.Duration) Link {
	l := geoLink()
	l.Schedule = &Schedule{Outages: []Outage{{Start: start, Len: GeoFadeOutage}}}
	return l
}

// GeoGE is the Gilbert-Elliott chain of the geo-ge profile: stationary loss
// 0.002/0.102 x 0.5 + 0.098/0.102 x 0.0005 = 1.03 %, bad periods of 1/r =
// 10 frames on average.
var GeoGE = GilbertElliott{P: 0.002, R: 0.1, H: 0.5, K: 0.0005}

// LeoHandover is the leo-handover profile: a handover every 15 s, each into
// a satellite with its own RTT (40-60 ms) and rates, entered with 100-200 ms
// of outage or 200 ms of 30 % loss (see the package doc).
func LeoHandover() Link {
	ms := time.Millisecond
	return Link{
		Down: Dir{Delay: 20 * ms, RateBps: 100e6},
		Up:   Dir{Delay: 20 * ms, RateBps: 20e6},
		Seed: 1,
		Schedule: &Schedule{Handovers: &Handovers{First: 15 * time.Second, Period: 15 * time.Second, Steps: []Step{
			{Outage: 100 * ms, Delay: 20 * ms, DownRate: 100e6, UpRate: 20e6},
			{Burst: 200 * ms, BurstLoss: 0.3, Delay: 27 * ms, DownRate: 60e6, UpRate: 12e6},
			{Outage: 200 * ms, Delay: 30 * ms, DownRate: 150e6, UpRate: 20e6},
			{Burst: 200 * ms, BurstLoss: 0.3, Delay: 23 * ms, DownRate: 80e6, UpRate: 15e6},
		}}},
	}
}

// Profile returns a named link. "none" or "" is plain bridging.
func Profile(name string) (Link, error) {
	geo := geoLink()
	switch strings.ToLower(name) {
	case "", "none":
		return Link{Seed: 1}, nil
	case "geo":
		return geo, nil
	case "geo-lossy":
		geo.Down.Loss, geo.Up.Loss = 0.01, 0.01
		return geo, nil
	case "leo":
		return Link{
			Down: Dir{Delay: 20 * time.Millisecond, RateBps: 100e6, Loss: 0.005},
			Up:   Dir{Delay: 20 * time.Millisecond, RateBps: 20e6, Loss: 0.005},
			Seed: 1,
		}, nil
	case "geo-fade":
		return GeoFade(2 * time.Second), nil
	case "leo-handover":
		return LeoHandover(), nil
	case "geo-ge":
		down, up := GeoGE, GeoGE
		geo.Down.GE, geo.Up.GE = &down, &up
		return geo, nil
	}
	return Link{}, fmt.Errorf("unknown link profile %q (want one of %s)", name, strings.Join(Profiles(), ", "))
}

// ParseRate reads a rate in bits/s: a number with an optional k/M/G suffix
// (decimal) and an optional "bit", "bps" or "b" unit, e.g. "20M", "5Mbit".
func ParseRate(s string) (int64, error) {
	t := strings.TrimSpace(s)
	low := strings.ToLower(t)
	for _, unit := range []string{"bit/s", "bits", "bit", "bps", "b"} {
		if strings.HasSuffix(low, unit) {
			low = strings.TrimSuffix(low, unit)
			break
		}
	}
	mult := 1.0
	switch {
	case strings.HasSuffix(low, "k"):
		mult, low = 1e3, strings.TrimSuffix(low, "k")
	case strings.HasSuffix(low, "m"):
		mult, low = 1e6, strings.TrimSuffix(low, "m")
	case strings.HasSuffix(low, "g"):
		mult, low = 1e9, strings.TrimSuffix(low, "g")
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(low), 64)
	if err != nil {
		return 0, fmt.Errorf("rate %q: %w", s, err)
	}
	r := v * mult
	if math.IsNaN(r) || r < 0 || r > math.MaxInt64/2 {
		return 0, fmt.Errorf("rate %q out of range", s)
	}
	return int64(math.Round(r)), nil
}
