// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// healthyHealth is a Health whose every check passes, pinned in a
// directory of the test's.
func healthyHealth(t *testing.T) *Health {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pepsal_config"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return &Health{
		PinDir:    dir,
		Problems:  func() []string { return nil },
		Ifaces:    func() ([]loader.Iface, error) { return []loader.Iface{{Index: 3, Name: "eth0"}}, nil },
		Listeners: func() (uint64, uint64) { return 11, 12 },
		Accepting: func() bool { return true },
		Full:      func() bool { return false },
	}
}

// askHealth serves one request to h's endpoint and decodes the body.
func askHealth(t *testing.T, serve http.HandlerFunc) (int, healthReport) {
	t.Helper()
	rec := httptest.NewRecorder()
	serve(rec, httptest.NewRequest("GET", "/", nil))
	var rep healthReport
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	return rec.Code, rep
}

// TestHealthz: 200 while every check passes; 503 naming the reason when
// one fails: pins removed, an interface gone, no listener, no longer
// accepting. A full admission limit is not unhealthy, only not ready.
func TestHealthz(t *testing.T) {
	h := healthyHealth(t)
	if code, rep := askHealth(t, h.Healthz); code != 200 || rep.Status != "ok" || len(rep.Problems) != 0 {
		t.Fatalf("healthy: %d %+v", code, rep)
	}
	if code, _ := askHealth(t, h.Ready); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	for _, c := range []struct {
		name   string
		break_ func(h *Health)
		want   string
	}{
		{"pins removed", func(h *Health) { os.Remove(filepath.Join(h.PinDir, "pepsal_config")) }, "no longer pinned"},
		{"attachment incoherent", func(h *Health) {
			h.Problems = func() []string { return []string{"interface ifindex 3 no longer exists"} }
		}, "ifindex 3 no longer exists"},
		{"interface gone", func(h *Health) {
			h.Ifaces = func() ([]loader.Iface, error) { return []loader.Iface{{Index: 3, Name: "(gone)"}}, nil }
		}, "no interface present splits"},
		{"return-only left", func(h *Health) {
			h.Ifaces = func() ([]loader.Iface, error) { return []loader.Iface{{Index: 3, Name: "eth1", ReturnOnly: true}}, nil }
		}, "no interface present splits"},
		{"no listener", func(h *Health) { h.Listeners = func() (uint64, uint64) { return 0, 0 } }, "no proxy listener"},
		{"stopping", func(h *Health) { h.Accepting = func() bool { return false } }, "no longer accepts"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := healthyHealth(t)
			c.break_(h)
			for _, serve := range []http.HandlerFunc{h.Healthz, h.Ready} {
				code, rep := askHealth(t, serve)
				if code != 503 || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], c.want) {
					t.Errorf("%d %+v: want 503 and %q", code, rep, c.want)
				}
			}
		})
	}
	t.Run("full", func(t *testing.T) {
		h := healthyHealth(t)
		h.Full = func() bool { return true }
		if code, _ := askHealth(t, h.Healthz); code != 200 {
			t.Errorf("healthz %d while full: want 200", code)
		}
		if code, rep := askHealth(t, h.Ready); code != 503 || rep.Status != "not ready" || !strings.Contains(rep.Problems[0], "connection limit") {
			t.Errorf("ready %d %+v while full: want 503", code, rep)
		}
	})
}
