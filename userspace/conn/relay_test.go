// SPDX-License-Identifier: Apache-2.0

package conn

import "testing"

// TestMetricsFallbackReason: the relay column's text reads back as the
// reason class the metrics count it under (the metrics parsed the text
// before RelayState carried the reason).
func TestMetricsFallbackReason(t *testing.T) {
	for relay, want := range map[string]string{
		"splice":                                 "",
		"kernel":                                 "",
		"userspace: first bytes not read whole":  "first_bytes_partial",
		"userspace: server closed before insert": "closed_before_insert",
		"userspace: client: update pepsal_relay: no space": "insert_failed",
		"userspace: server: bad fd":                        "insert_failed",
		"userspace: SO_COOKIE: bad file descriptor":        "setup_failed",
	} {
		var r RelayState
		if err := r.UnmarshalText([]byte(relay)); err != nil {
			t.Fatalf("%q: %v", relay, err)
		}
		reason, ok := r.Fallback()
		got := reason.String()
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", relay, got, ok, want)
		}
	}
}

// TestText: the states print the texts `pepsal conns`, the metrics and the
// integration tests know, and read back from them; unknown text is refused.
func TestText(t *testing.T) {
	for state, want := range map[RelayState]string{
		{}:                        "splice",
		{Via: Kernel}:             "kernel",
		{Via: SpliceUntilOffload}: "splice until offload",
		Fallback(FirstBytesPartial, "first bytes not read whole"):                           "userspace: first bytes not read whole",
		Fallback(ClosedBeforeInsert, "client closed before insert"):                         "userspace: client closed before insert",
		Fallback(InsertFailed, "server: insert into pepsal_relay: no space left on device"): "userspace: server: insert into pepsal_relay: no space left on device",
		Fallback(SetupFailed, "relay state in pepsal_relaydir: argument list too long"):     "userspace: relay state in pepsal_relaydir: argument list too long",
	} {
		if got := state.String(); got != want {
			t.Errorf("%+v prints %q, want %q", state, got, want)
		}
		var back RelayState
		if err := back.UnmarshalText([]byte(want)); err != nil || back != state {
			t.Errorf("%q reads back as %+v (%v), want %+v", want, back, err, state)
		}
	}
	for o, want := range map[Outcome]string{Completed: "completed", WasReset: "reset", UpstreamFailed: "upstream_failed",
		LoopRefused: "loop_refused", LocalFailed: "local_failed", DestDenied: "dest_denied"} {
		var back Outcome
		if o.String() != want || back.UnmarshalText([]byte(want)) != nil || back != o {
			t.Errorf("outcome %d prints %q, reads back as %d, want %q", o, o, back, want)
		}
	}
	for _, r := range FallbackReasons() {
		var back FallbackReason
		if err := back.UnmarshalText([]byte(r.String())); err != nil || back != r {
			t.Errorf("reason %q reads back as %q (%v)", r, back, err)
		}
	}
	for _, r := range DenyReasons() {
		var back DenyReason
		if err := back.UnmarshalText([]byte(r.String())); err != nil || back != r || r.String() == "" {
			t.Errorf("deny reason %q reads back as %q (%v)", r, back, err)
		}
	}
	var o Outcome
	var r RelayState
	if o.UnmarshalText([]byte("done")) == nil || r.UnmarshalText([]byte("sockmap")) == nil {
		t.Error("unknown text accepted")
	}
}
