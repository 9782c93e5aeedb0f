// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Outage is a period during which the link carries nothing, counted from the
// schedule's start (see Bridge.Arm).
type Outage struct {
	Start, Len time.Duration
}

// Step is a state the link enters at a handover: how it is entered (a brief
// outage, then a burst of loss) and its one-way delay and rates afterwards.
// A zero Delay, DownRate or UpRate keeps the Link's own value.
type Step struct {
	Outage    time.Duration // link down from the handover on
	Burst     time.Duration // then loss with probability BurstLoss
	BurstLoss float64
	Delay     time.Duration // one-way, both directions
	DownRate  int64         // bits/s
	UpRate    int64
}

// Handovers repeat every Period from First on. Handover k (k = 0, 1, ...)
// enters Steps[(k+1) % len(Steps)]; before the first one the link is in
// Steps[0]. A periodic outage is a single Step with only Outage set.
type Handovers struct {
	First, Period time.Duration
	Steps         []Step
}

// Schedule changes the link over time. The zero value (or a nil pointer)
// never changes it. Times count from the schedule's start: the bridge's
// start (unless WaitArm), or its last Arm call.
type Schedule struct {
	Outages   []Outage // fixed, in any order, may overlap
	Handovers *Handovers
	// WaitArm keeps the link in its own state (no outage, no handover, the
	// Link's delay and rates) until the first Bridge.Arm, so that a test
	// bed can be built and warmed up before the schedule starts.
	WaitArm bool
}

// linkState is what the schedule says at one instant. step is -1 when the
// link keeps its configured delay and rates.
type linkState struct {
	down      bool
	burstLoss float64
	step      int
}

// at evaluates the schedule t after its start. It is a pure function of t,
// so tests can check it without a link, and the pipe can ask about a
// frame's arrival time before the frame gets there.
func (s *Schedule) at(t time.Duration) linkState {
	st := linkState{step: -1}
	if s == nil {
		return st
	}
	for _, o := range s.Outages {
		if t >= o.Start && t < o.Start+o.Len {
			st.down = true
		}
	}
	h := s.Handovers
	if h == nil || len(h.Steps) == 0 {
		return st
	}
	st.step = 0
	if t < h.First {
		return st
	}
	k := int64((t - h.First) / h.Period)
	since := t - h.First - time.Duration(k)*h.Period
	st.step = int((k + 1) % int64(len(h.Steps)))
	cur := h.Steps[st.step]
	switch {
	case since < cur.Outage:
		st.down = true
	case since < cur.Outage+cur.Burst:
		st.burstLoss = cur.BurstLoss
	}
	return st
}

// Validate rejects schedules the emulator cannot follow.
func (s *Schedule) Validate() error {
	if s == nil {
		return nil
	}
	var errs []error
	for i, o := range s.Outages {
		if o.Start < 0 || o.Len <= 0 {
			errs = append(errs, fmt.Errorf("outage %d: start %v, length %v: want start >= 0 and length > 0", i, o.Start, o.Len))
		}
	}
	h := s.Handovers
	if h == nil {
		return errors.Join(errs...)
	}
	if h.Period <= 0 || h.First < 0 || len(h.Steps) == 0 {
		errs = append(errs, fmt.Errorf("handovers: period %v, first %v, %d steps: want period > 0, first >= 0, a step", h.Period, h.First, len(h.Steps)))
	}
	for i, st := range h.Steps {
		if st.Outage < 0 || st.Burst < 0 || st.Outage+st.Burst >= h.Period {
			errs = append(errs, fmt.Errorf("handover step %d: outage %v + burst %v must be >= 0 and fit in the period %v", i, st.Outage, st.Burst, h.Period))
		}
		if math.IsNaN(st.BurstLoss) || st.BurstLoss < 0 || st.BurstLoss > 1 {
			errs = append(errs, fmt.Errorf("handover step %d: burst loss %v not in [0,1]", i, st.BurstLoss))
		}
		if st.Delay < 0 || st.DownRate < 0 || st.UpRate < 0 {
			errs = append(errs, fmt.Errorf("handover step %d: negative delay or rate", i))
		}
	}
	return errors.Join(errs...)
}

// ParseOutages reads a schedule of outages, one a line: "START LENGTH" (a
// fixed outage, e.g. "2s 20s") or "every PERIOD LENGTH [from FIRST]" (a
// periodic one, e.g. "every 30s 1s from 10s"; at most one such line). Blank
// lines and text after '#' are ignored.
func ParseOutages(r io.Reader) (*Schedule, error) {
	s := &Schedule{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if err := s.parseLine(f); err != nil {
			return nil, fmt.Errorf("outage schedule line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("outage schedule: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Schedule) parseLine(f []string) error {
	durs := func(words []string) ([]time.Duration, error) {
		out := make([]time.Duration, len(words))
		for i, w := range words {
			d, err := time.ParseDuration(w)
			if err != nil {
				return nil, err
			}
			out[i] = d
		}
		return out, nil
	}
	if f[0] != "every" {
		if len(f) != 2 {
			return fmt.Errorf("want START LENGTH, got %q", strings.Join(f, " "))
		}
		d, err := durs(f)
		if err != nil {
			return err
		}
		s.Outages = append(s.Outages, Outage{Start: d[0], Len: d[1]})
		return nil
	}
	if s.Handovers != nil {
		return errors.New("a second periodic outage")
	}
	words := f[1:]
	if len(words) == 4 && words[2] == "from" {
		words = []string{words[0], words[1], words[3]}
	} else if len(words) != 2 {
		return fmt.Errorf("want every PERIOD LENGTH [from FIRST], got %q", strings.Join(f, " "))
	}
	d, err := durs(words)
	if err != nil {
		return err
	}
	first := d[0]
	if len(d) == 3 {
		first = d[2]
	}
	s.Handovers = &Handovers{First: first, Period: d[0], Steps: []Step{{Outage: d[1]}}}
	return nil
}
