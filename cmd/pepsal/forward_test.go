// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/forwardfilter"
)

// filteredEnv is an env that may touch the host up to the forward-filter
// check, whose reading of netfilter gives found and err; anything past it
// (the attachment) fails the test.
func filteredEnv(t *testing.T, found forwardfilter.Finding, err error) *env {
	e := untouchable(t)
	e.privileged = func() error { return nil }
	e.forwardFilter = func() (forwardfilter.Finding, error) { return found, err }
	e.openAttachment = func() (*loader.Attachment, error) {
		t.Error("the attachment was opened past the forward-filter check")
		return nil, errors.New("the test stops here")
	}
	return e
}

// TestForwardFilterCheckRefuses: by default, run and attach refuse to start
// where the router filters forwarded traffic, in one line that names what
// filters and the ways out, before anything is attached.
func TestForwardFilterCheckRefuses(t *testing.T) {
	found := forwardfilter.Classify([]forwardfilter.Chain{
		{Family: "inet", Table: "filter", Name: "forward", Hook: "forward", Type: "filter", Drop: true, Rules: 3},
	}, []string{"iptables"})
	want := "the router filters forwarded traffic (inet filter forward: policy drop, 3 rules; iptables-legacy filter table: rules not inspected); " +
		`connections pepsal splits would bypass it: see README "Firewall", then use --forward-filter=mirrored or --forward-filter=ignore`
	for _, args := range [][]string{
		{"run"},
		{"run", "--forward-filter=check"},
		{"attach", "--iface", "nosuch0"},
	} {
		oneLine(t, pepsal(t, filteredEnv(t, found, nil), args...), want)
	}
	// Unreadable is not harmless either.
	oneLine(t, pepsal(t, filteredEnv(t, forwardfilter.Finding{}, errors.New("list nftables chains: EPERM")), "run"),
		"cannot tell whether the router filters forwarded traffic: list nftables chains: EPERM; --forward-filter=ignore starts without knowing")
}

// TestCheckForwardModes: what each mode reports for status, and that only
// check refuses.
func TestCheckForwardModes(t *testing.T) {
	filtered := forwardfilter.Classify([]forwardfilter.Chain{
		{Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Type: "filter", Rules: 1},
	}, nil)
	for _, c := range []struct {
		name    string
		mode    forwardfilter.Mode
		mark    uint32
		found   forwardfilter.Finding
		err     error
		refused bool
		status  string
	}{
		{"check, nothing filters", forwardfilter.Check, 0, forwardfilter.Finding{}, nil, false, "none"},
		{"check, filtered", forwardfilter.Check, 0, filtered, nil, true, "ip filter FORWARD: 1 rule"},
		{"mirrored", forwardfilter.Mirrored, 0x5e9a2, filtered, nil, false, "ip filter FORWARD: 1 rule"},
		{"ignore", forwardfilter.Ignore, 0, filtered, nil, false, "ip filter FORWARD: 1 rule"},
		{"ignore, unreadable", forwardfilter.Ignore, 0, forwardfilter.Finding{}, errors.New("EPERM"), false, "unknown: EPERM"},
	} {
		var log bytes.Buffer
		e := filteredEnv(t, c.found, c.err)
		got, err := checkForward(e, forwardPlan{mode: c.mode, serverMark: c.mark}, slog.New(slog.NewTextHandler(&log, nil)))
		if (err != nil) != c.refused || got.Found != c.status || got.Mode != c.mode.String() || got.ServerMark != c.mark {
			t.Errorf("%s: %+v, %v", c.name, got, err)
		}
		// ignore warns, once; nothing else does.
		if warns := strings.Count(log.String(), "level=WARN"); warns != map[bool]int{true: 1}[c.mode == forwardfilter.Ignore] {
			t.Errorf("%s: %d warnings:\n%s", c.name, warns, log.String())
		}
	}
}
