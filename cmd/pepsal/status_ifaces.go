// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"time"

	"github.com/pepsal/pepsal/userspace/report"
)

// ifaceProblems are the status's problems of the interfaces a daemon
// follows: one it was given on which nothing is split now.
func ifaceProblems(d *report.DaemonInfo) []string {
	if d == nil {
		return nil
	}
	var out []string
	for _, i := range d.Interfaces {
		switch {
		case i.Attached:
		case i.Ifindex != 0:
			out = append(out, fmt.Sprintf("interface %s (ifindex %d): the classifier is not attached, its new connections are not split: %s", i.Name, i.Ifindex, i.Error))
		case i.Losses > 0:
			out = append(out, fmt.Sprintf("interface %s no longer exists: its new connections are not split until one of that name is back (the daemon re-attaches it)", i.Name))
		default:
			out = append(out, fmt.Sprintf("interface %s does not exist yet: nothing is split on it until it appears (--iface-wait)", i.Name))
		}
	}
	return out
}

// printInterfaces says how the interfaces the daemon follows stand.
func printInterfaces(w io.Writer, d *report.DaemonInfo) {
	for _, i := range d.Interfaces {
		since := (time.Duration(i.SinceSeconds) * time.Second).String()
		state := fmt.Sprintf("attached (ifindex %d) for %s", i.Ifindex, since)
		if !i.Attached {
			state = fmt.Sprintf("NOT ATTACHED for %s, nothing split on it", since)
		}
		fmt.Fprintf(w, "follows:   %s %s; lost %d times, re-attached %d times\n", i.Name, state, i.Losses, i.Reattached)
	}
}
