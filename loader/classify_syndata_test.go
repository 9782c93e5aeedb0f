// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"net/netip"
	"testing"
)

// divertTrusted is DIVERT_TRUSTED (bpf/pepsal.h): the SYN came from --fastopen-from.
const divertTrusted = 1

// fastOpenForTest sets what a daemon whose listeners take data in SYNs
// (check) writes: the admission's syn_data_check and the trusted prefixes,
// until the end of the test.
func fastOpenForTest(t *testing.T, e *classifyEnv, check bool, from ...netip.Prefix) {
	e.put(t, "pepsal_admit", uint32(0), classifyAdmission{SynDataCheck: b32(check)})
	t.Cleanup(func() { e.put(t, "pepsal_admit", uint32(0), classifyAdmission{}) })
	for _, p := range from {
		for _, k := range ExcludeKeys(p) {
			e.put(t, "pepsal_tfo_from", k, uint8(1))
			t.Cleanup(func() { e.del(t, "pepsal_tfo_from", k) })
		}
	}
}

// synDataCases: a SYN carrying data, where the listeners take it without a
// cookie, is diverted only from a --fastopen-from prefix (issue #22, 2):
// answered before the handshake, a spoofed one would make the proxy dial
// and reflect the reply. SYNs without data, and every SYN where the
// listeners do not take data, are diverted as before.
func synDataCases(t *testing.T, e *classifyEnv, f testFamily) {
	data := f.syn
	data.payload = 18 // "GET / HTTP/1.1\r\n\r\n"
	// A header with 4 bytes of options (room for a cookie-less fast-open
	// option, kind 34 length 2, and padding): options, not data.
	optsOnly := f.syn
	optsOnly.doff, optsOnly.payload = u8(6), 4
	optsData := optsOnly
	optsData.payload = 4 + 18
	client := netip.PrefixFrom(f.syn.src, f.syn.src.BitLen()-8)
	other := netip.MustParsePrefix("203.0.113.0/24")
	otherFamily := netip.MustParsePrefix("0.0.0.0/0")
	if f.name == "v4" {
		otherFamily = netip.MustParsePrefix("::/0")
	}
	untrusted := func(from ...netip.Prefix) func(t *testing.T, p *pkt) {
		return func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			fastOpenForTest(t, e, true, from...)
		}
	}
	for _, c := range []struct {
		name string
		p    pkt
		from []netip.Prefix
	}{
		{"no_prefix", data, nil},
		{"other_prefix", data, []netip.Prefix{other}},
		{"other_family_everything", data, []netip.Prefix{otherFamily}},
		{"fastopen_option", optsData, nil},
	} {
		e.check(t, tcase{name: f.name + "/syn_data_untrusted_" + c.name, p: c.p, want: one("syn_data_untrusted"), setup: untrusted(c.from...)})
	}
	e.check(t, tcase{name: f.name + "/syn_data_trusted", p: data, want: one("syn_diverted"), mark: true, divertFlags: divertTrusted,
		setup: untrusted(client)})
	e.check(t, tcase{name: f.name + "/syn_data_trusted_mapped_form", p: data, want: one("syn_diverted"), mark: true, divertFlags: divertTrusted,
		setup: func(t *testing.T, p *pkt) {
			if f.name == "v4" { // ::ffff:192.0.2.0/120, as an operator may write it
				untrusted(netip.PrefixFrom(netip.AddrFrom16(client.Addr().As16()), 96+client.Bits()))(t, p)
			} else {
				untrusted(client)(t, p)
			}
		}})
	e.check(t, tcase{name: f.name + "/syn_options_no_data_untrusted", p: optsOnly, want: one("syn_diverted"), mark: true, setup: untrusted()})
	e.check(t, tcase{name: f.name + "/syn_no_data_untrusted", p: f.syn, want: one("syn_diverted"), mark: true, setup: untrusted()})
	// Listeners that take no data in SYNs (the terminal role): nothing changes.
	e.check(t, tcase{name: f.name + "/syn_data_unchecked", p: data, want: one("syn_diverted"), mark: true,
		setup: func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			fastOpenForTest(t, e, false)
		}})
	// Trust is recorded even unchecked: sock_ops reads it for any fast-open child.
	e.check(t, tcase{name: f.name + "/syn_data_unchecked_trusted", p: data, want: one("syn_diverted"), mark: true, divertFlags: divertTrusted,
		setup: func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			fastOpenForTest(t, e, false, client)
		}})
}

// sourceLimitCases: a client address the daemon marked as holding
// --max-conns-per-client has its SYNs forwarded unsplit; every other
// address is still diverted.
func sourceLimitCases(t *testing.T, e *classifyEnv, f testFamily) {
	full := func(addr netip.Addr) func(t *testing.T, p *pkt) {
		return func(t *testing.T, p *pkt) {
			e.withListener(f)(t, p)
			k := classifySourceKey{Addr: addr.As16()}
			e.put(t, "pepsal_srcfull", k, uint8(1))
			t.Cleanup(func() { e.del(t, "pepsal_srcfull", k) })
		}
	}
	e.check(t, tcase{name: f.name + "/syn_source_full", p: f.syn, want: one("syn_bypass_source"), setup: full(f.syn.src)})
	neighbour := f.syn.src.Next()
	e.check(t, tcase{name: f.name + "/syn_other_source_full", p: f.syn, want: one("syn_diverted"), mark: true, setup: full(neighbour)})
}
