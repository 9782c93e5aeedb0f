// SPDX-License-Identifier: Apache-2.0

package report

import (
	"encoding/json"
	"reflect"
	"sort"
	"testing"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/tests/testbed"
)

// TestStatusReportFieldNames pins the JSON names of `pepsal status --json`:
// scripts and the tests read them, so a rename must be deliberate.
func TestStatusReportFieldNames(t *testing.T) {
	rep := StatusReport{
		Attached: true, Serving: true, PinDir: "/sys/fs/bpf/pepsal/x",
		Ifaces:     []loader.Iface{{Index: 2, Name: "eth0", TCMode: "tcx"}},
		Programs:   map[string]uint32{"classify": 1},
		Routing:    &RoutingReport{Fwmark: 1},
		Listeners:  map[string]uint64{"ipv4": 1},
		Counters:   []loader.Counter{{Name: "syn_diverted", Value: 1}},
		Relay:      &RelayReport{Sockets: 1},
		Daemon:     &DaemonInfo{PID: 1},
		DaemonNote: "x", OwnerPID: 1, OwnerAlive: true, Problems: []string{"x"},
		Policy: &PolicyReport{Ports: []uint16{80}, Exclude: []string{"10.0.0.0/8"}},
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	want := []string{"attached", "counters", "daemon", "daemon_error", "ifaces", "listener_cookies", "owner_alive",
		"owner_pid", "pin_dir", "policy", "problems", "program_ids", "relay_map_entries", "routing", "serving"}
	if got := keys(top); !reflect.DeepEqual(got, want) {
		t.Errorf("status keys %v, want %v", got, want)
	}
	for field, want := range map[string][]string{
		"relay_map_entries": {"directions", "sockets", "user_counts"},
		"routing":           {"fwmark", "routes_present", "rule_priority", "rules_present", "table"},
		"policy":            {"all_ports", "exclude", "ports"},
	} {
		var sub map[string]json.RawMessage
		if err := json.Unmarshal(top[field], &sub); err != nil {
			t.Fatal(err)
		}
		if got := keys(sub); !reflect.DeepEqual(got, want) {
			t.Errorf("%s keys %v, want %v", field, got, want)
		}
	}

	// Not attached, no daemon: what stays is what scripts test first.
	b, _ = json.Marshal(StatusReport{Ifaces: []loader.Iface{}})
	if string(b) != `{"attached":false,"serving":false,"ifaces":[]}` {
		t.Errorf("empty report %s", b)
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestStatusReportCounter(t *testing.T) {
	var rep StatusReport
	if err := json.Unmarshal([]byte(`{"counters":[{"name":"syn_diverted","value":7},{"name":"pkt_unparsed","value":0}]}`), &rep); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		v    uint64
		ok   bool
	}{
		{"syn_diverted", 7, true},
		{"pkt_unparsed", 0, true},    // present at zero
		{"syn_diverted_x", 0, false}, // misspelled or renamed: not a zero
	} {
		if v, ok := rep.Counter(c.name); v != c.v || ok != c.ok {
			t.Errorf("Counter(%q) = %d, %v; want %d, %v", c.name, v, ok, c.v, c.ok)
		}
	}
}

// TestControlRootMatchesTestbed: the test beds remove what killed daemons
// leave under ControlRoot, and must look where the daemon puts it.
func TestControlRootMatchesTestbed(t *testing.T) {
	if testbed.ControlRoot != ControlRoot {
		t.Fatalf("testbed.ControlRoot %q, report.ControlRoot %q", testbed.ControlRoot, ControlRoot)
	}
}
