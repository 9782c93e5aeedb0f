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
	return report.IfaceProblems(d.Interfaces)
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
