// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/report"
)

// Health is what /healthz and /ready check, each read when asked.
//
// /healthz says whether pepsal is in place and able to split, something a
// restart or an operator must fix when it is not: the attachment is still
// pinned and coherent (every interface it records exists and carries the
// classifier, the sk_lookup link and the policy routing are there), the
// proxy's listeners are registered in the steering map, the daemon accepts
// (not stopped, draining or handed over to a new daemon), every interface
// it follows by name is attached, and at least one interface splits new
// connections.
//
// /ready says whether a new connection arriving now would be split:
// healthy, and the admission limit is not full (then new SYNs go unsplit
// until the count falls below the low-water mark, which passes alone).
type Health struct {
	PinDir    string
	Problems  func() []string                // loader.Attachment.Problems; nil: none checked
	Ifaces    func() ([]loader.Iface, error) // the interfaces the attachment records
	Followed  func() []report.IfaceHealth    // the interfaces the daemon follows by name; nil: none
	Listeners func() (v4, v6 uint64)         // cookies in the steering map; 0: none
	Accepting func() bool                    // the pipeline accepts
	Full      func() bool                    // the admission flag is set
}

// healthReport is the body of both endpoints.
type healthReport struct {
	Status   string   `json:"status"` // "ok" or "unhealthy" / "not ready"
	Problems []string `json:"problems,omitempty"`
}

// problems lists why the daemon is not healthy; none: healthy.
func (h Health) problems() []string {
	var out []string
	if _, err := os.Stat(filepath.Join(h.PinDir, "pepsal_config")); err != nil {
		// Removed pins: the next detach or attach cannot find the attachment.
		out = append(out, fmt.Sprintf("the attachment is no longer pinned in %s", h.PinDir))
	}
	if h.Problems != nil {
		out = append(out, h.Problems()...)
	}
	switch ifaces, err := h.Ifaces(); {
	case err != nil:
		out = append(out, fmt.Sprintf("interfaces unreadable: %v", err))
	case !splitsSomewhere(ifaces):
		out = append(out, "no interface present splits new connections")
	}
	if h.Followed != nil {
		// Each interface the daemon was given must split: status says so too.
		out = append(out, report.IfaceProblems(h.Followed())...)
	}
	if v4, v6 := h.Listeners(); v4 == 0 && v6 == 0 {
		out = append(out, "no proxy listener registered: diverted SYNs find none")
	}
	if !h.Accepting() {
		out = append(out, "the daemon no longer accepts connections (stopping, or handed over to a new daemon)")
	}
	return out
}

// splitsSomewhere: an interface that exists takes new connections.
func splitsSomewhere(ifaces []loader.Iface) bool {
	for _, i := range ifaces {
		if !i.ReturnOnly && i.Name != "(gone)" {
			return true
		}
	}
	return false
}

// Healthz serves /healthz: 200 and {"status":"ok"}, or 503 and the
// problems.
func (h Health) Healthz(w http.ResponseWriter, _ *http.Request) {
	p := h.problems()
	writeHealth(w, p, "unhealthy")
}

// Ready serves /ready: /healthz's checks, and the admission limit.
func (h Health) Ready(w http.ResponseWriter, _ *http.Request) {
	p := h.problems()
	if h.Full != nil && h.Full() {
		p = append(p, "the connection limit (or a resource shortage) holds: new connections are forwarded unsplit")
	}
	writeHealth(w, p, "not ready")
}

func writeHealth(w http.ResponseWriter, problems []string, bad string) {
	rep := healthReport{Status: "ok", Problems: problems}
	code := http.StatusOK
	if len(problems) > 0 {
		rep.Status, code = bad, http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(rep)
}

// health is what the daemon's /healthz and /ready read.
func (r *run) health() Health {
	h := Health{
		PinDir: r.k.PinDir,
		Ifaces: r.k.Ifaces,
		Listeners: func() (uint64, uint64) {
			return r.k.ListenerCookie(loader.ListenerV4), r.k.ListenerCookie(loader.ListenerV6)
		},
		Accepting: func() bool { return !r.stopping.Load() && !r.handedOver.Load() },
		Full:      func() bool { return r.pipeline.Table.Stats().Full },
		Followed:  r.follow.health,
	}
	// loader.Attachment checks itself; a test double need not.
	if p, ok := r.k.Attachment.(interface{ Problems() []string }); ok {
		h.Problems = p.Problems
	}
	return h
}
