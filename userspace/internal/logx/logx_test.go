// SPDX-License-Identifier: Apache-2.0

package logx

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateLogHoldsBackAStorm(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	r := RateLog{Period: time.Hour}
	for range 1000 {
		r.Log(log, slog.LevelWarn, "storm")
	}
	if n := strings.Count(buf.String(), "storm"); n != 1 {
		t.Fatalf("1000 lines in one period wrote %d, want 1:\n%s", n, buf.String())
	}
	r.next = time.Time{} // the period is over
	r.Log(log, slog.LevelWarn, "storm")
	if !strings.Contains(buf.String(), "similar_lines_held_back=999") {
		t.Errorf("the next line does not say how many were held back:\n%s", buf.String())
	}
}
