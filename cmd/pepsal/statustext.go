// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/explain"
	"github.com/pepsal/pepsal/userspace/report"
)

// policyOf reads which new connections the classifier considers; nil when
// its maps cannot be read (the problems say why).
func policyOf(att *loader.Attachment) *report.PolicyReport {
	st, err := att.ClassifierState()
	if err != nil {
		return nil
	}
	return policyFrom(st)
}

// policyFrom is the classifier's state as status reports it.
func policyFrom(st loader.ClassifierState) *report.PolicyReport {
	p := &report.PolicyReport{AllPorts: st.AllPorts, Ports: st.Ports}
	for _, x := range st.Exclude {
		p.Exclude = append(p.Exclude, explain.Readable(x).String())
	}
	return p
}

// printPolicy says which destination ports are split and which
// destinations never are.
func printPolicy(w io.Writer, p *report.PolicyReport) {
	if p == nil {
		return
	}
	ports := "all"
	if !p.AllPorts {
		var s []string
		for _, port := range p.Ports {
			s = append(s, fmt.Sprint(port))
		}
		ports = strings.Join(s, ",")
	}
	fmt.Fprintf(w, "ports:     %s\n", ports)
	exclude := "none"
	if len(p.Exclude) > 0 {
		exclude = strings.Join(p.Exclude, ", ")
	}
	fmt.Fprintf(w, "exclude:   %s\n", exclude)
}

// printRole writes the daemon's version, role and the presets in force,
// and the destinations it refuses besides its own host's.
func printRole(w io.Writer, d *report.DaemonInfo) {
	role := d.Role
	if role == "" {
		role = "none"
	}
	fmt.Fprintf(w, "version:   %s\n", d.Version)
	fmt.Fprintf(w, "role:      %s\n", role)
	for _, p := range d.Presets {
		fmt.Fprintf(w, "preset:    %s\n", p)
	}
	if b := d.RTOBound; b != nil {
		fmt.Fprintf(w, "rto-max:   %d legs bounded, %d short (auto), %d without an RTT yet (auto), %d refused\n", b.Set, b.ShortLeg, b.NoRTT, b.Failed)
	}
	if o := d.Outages; o != nil {
		fmt.Fprintf(w, "outages:   %d seen (longest %s, last %s, found back within %s), %d stalled legs kicked, %d refused; probing %d (%d silent) every %s\n",
			o.Seen, ms(o.LongestMs), ms(o.LastMs), ms(o.LastRecoveryMs), o.Kicked, o.KickFailed, o.Probing, o.Down, ms(o.ProbeMs))
	}
	if len(d.Deny) > 0 {
		fmt.Fprintf(w, "deny:      %s\n", strings.Join(d.Deny, ", "))
	}
}

// ms is a report's milliseconds as a duration.
func ms(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
