// SPDX-License-Identifier: Apache-2.0

package forwardfilter

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestClassify: only filter chains of IP families at the forward hook that
// can refuse something count; a chain that accepts everything with no rule
// (what iptables-nft leaves after `iptables -L`) does not.
func TestClassify(t *testing.T) {
	fwd := func(family, typ string, drop bool, rules int) Chain {
		return Chain{Family: family, Table: "filter", Name: "forward", Hook: "forward", Type: typ, Drop: drop, Rules: rules}
	}
	cases := []struct {
		name  string
		chain Chain
		want  bool
	}{
		{"inet policy drop, no rule", fwd("inet", "filter", true, 0), true},
		{"ip accept with a rule", fwd("ip", "filter", false, 1), true},
		{"ip6 accept with rules", fwd("ip6", "filter", false, 3), true},
		{"rules unreadable", fwd("inet", "filter", false, -1), true},
		{"accept, empty (iptables-nft default FORWARD)", fwd("ip", "filter", false, 0), false},
		{"bridge forward drops bridged frames only", fwd("bridge", "filter", true, 2), false},
		{"netdev", fwd("netdev", "filter", true, 2), false},
		{"input hook", Chain{Family: "inet", Table: "filter", Name: "input", Hook: "input", Type: "filter", Drop: true, Rules: 4}, false},
		{"output hook", Chain{Family: "inet", Table: "filter", Name: "output", Hook: "output", Type: "filter", Rules: 1}, false},
		{"nat prerouting", Chain{Family: "ip", Table: "nat", Name: "PREROUTING", Hook: "prerouting", Type: "nat", Rules: 1}, false},
	}
	for _, c := range cases {
		f := Classify([]Chain{c.chain}, nil)
		if f.Filters() != c.want {
			t.Errorf("%s: filters %v, want %v (%s)", c.name, f.Filters(), c.want, f)
		}
	}
	if f := Classify(nil, []string{"iptables"}); !f.Filters() {
		t.Error("a legacy filter table: not counted as filtering")
	}
	if f := Classify(nil, nil); f.Filters() || f.String() != "none" {
		t.Errorf("nothing: filters %v, %q", f.Filters(), f)
	}
}

// TestFindingString: the text names each chain, its policy and rule count,
// as the refusal quotes it.
func TestFindingString(t *testing.T) {
	f := Classify([]Chain{
		{Family: "inet", Table: "filter", Name: "forward", Hook: "forward", Type: "filter", Drop: true, Rules: 3},
		{Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Type: "filter", Rules: 1},
		{Family: "ip", Table: "mangle", Name: "FORWARD", Hook: "forward", Type: "filter"},
	}, []string{"ip6tables"})
	want := "inet filter forward: policy drop, 3 rules; ip filter FORWARD: 1 rule; ip6tables-legacy filter table: rules not inspected"
	if got := f.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// TestLegacyFilterTables reads the x_tables names files: "filter" counts,
// other tables and missing files do not.
func TestLegacyFilterTables(t *testing.T) {
	dir := t.TempDir()
	if got, err := legacyFilterTables(dir); err != nil || got != nil {
		t.Fatalf("no files: %v, %v", got, err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ip_tables_names", "mangle\nnat\n")
	write("ip6_tables_names", "filter\n")
	got, err := legacyFilterTables(dir)
	if err != nil || !reflect.DeepEqual(got, []string{"ip6tables"}) {
		t.Fatalf("got %v, %v; want [ip6tables]", got, err)
	}
}

// TestModeText: each mode reads back from its name; anything else is
// refused with the names to use.
func TestModeText(t *testing.T) {
	for _, m := range []Mode{Check, Mirrored, Ignore} {
		var got Mode = 99
		if err := got.UnmarshalText([]byte(m.String())); err != nil || got != m {
			t.Errorf("%s: got %v, %v", m, got, err)
		}
	}
	var m Mode
	if err := m.UnmarshalText([]byte("output")); err == nil || err.Error() != `must be check, mirrored or ignore, not "output"` {
		t.Errorf("bad mode: %v", err)
	}
}

// xtBlob builds an IPv4 x_tables entry blob: entries of 152 bytes (the
// 112-byte ipt_entry, a standard target and its verdict), each with the
// given verdict (only a policy's is read).
func xtBlob(verdicts ...int32) []byte {
	const size, target = 152, 112
	blob := make([]byte, size*len(verdicts))
	for i, v := range verdicts {
		e := blob[i*size:]
		binary.NativeEndian.PutUint16(e[ipv4OffsetsAt:], target)
		binary.NativeEndian.PutUint16(e[ipv4OffsetsAt+2:], size)
		binary.NativeEndian.PutUint32(e[target+verdictAt:], uint32(v))
	}
	return blob
}

// TestChainRules walks a legacy table's FORWARD chain: the entries before
// its underflow are its rules, the underflow's verdict its policy; a blob
// whose offsets do not lead there is refused, never read past its end.
func TestChainRules(t *testing.T) {
	const accept, drop = -2, -1
	// INPUT policy, FORWARD: two rules and a drop policy, OUTPUT policy.
	blob := xtBlob(accept, accept, accept, drop, accept)
	if d, n, err := chainRules(blob, 152, 456, ipv4OffsetsAt); err != nil || !d || n != 2 {
		t.Errorf("two rules, policy drop: drop %v, %d rules, %v", d, n, err)
	}
	if d, n, err := chainRules(blob, 0, 0, ipv4OffsetsAt); err != nil || d || n != 0 {
		t.Errorf("no rule, policy accept: drop %v, %d rules, %v", d, n, err)
	}
	for name, c := range map[string]struct {
		blob             []byte
		entry, underflow uint32
	}{
		"underflow between entries": {blob, 152, 400},
		"underflow past the end":    {blob, 0, 1 << 20},
		"entry past the end":        {blob, 1 << 20, 1<<20 + 1},
		"truncated policy":          {blob[:456+100], 152, 456},
		"next offset 0":             {make([]byte, 304), 0, 152},
	} {
		if _, _, err := chainRules(c.blob, c.entry, c.underflow, ipv4OffsetsAt); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
