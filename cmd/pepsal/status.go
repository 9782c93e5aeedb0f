// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/conn"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/spf13/cobra"
)

func statusCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the attachment, the daemon and the decision counters; exit 0 only when attached and serving",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := collectStatus(e)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), rep)
			}
			if len(rep.Problems) > 0 {
				return exitError{code: 3, msg: "attachment not coherent: " + strings.Join(rep.Problems, "; ")}
			}
			if !rep.Attached || !rep.Serving {
				return exitError{code: 3}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// collectStatus asks the daemon and reads the attachment of this namespace.
func collectStatus(e *env) (*report.StatusReport, error) {
	rep := &report.StatusReport{Ifaces: []loader.Iface{}}
	var info report.DaemonInfo
	if err := e.query("info", &info); err == nil {
		rep.Daemon = &info
	} else {
		rep.DaemonNote = err.Error()
	}
	att, err := e.openAttachment()
	var foreign *loader.ForeignPinsError
	if errors.As(err, &foreign) {
		rep.PinDir = foreign.Dir
		rep.Problems = []string{foreign.Reason + "; `pepsal detach`, `pepsal attach` or `pepsal run --iface` removes them"}
		return rep, nil
	}
	if errors.Is(err, loader.ErrNotAttached) {
		return rep, nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("pepsal status needs root: the BPF pins are root's alone (%w)", err)
	}
	if err != nil {
		return nil, err
	}
	defer att.Close()
	rep.Attached = true
	rep.PinDir = att.Dir
	if rep.Ifaces, err = att.Ifaces(); err != nil {
		return nil, err
	}
	rep.Programs = att.ProgramIDs()
	if r, err := att.Routing(); err == nil {
		rr := &report.RoutingReport{Fwmark: r.Mark, Table: r.Table, RulePriority: r.Priority}
		rr.Rules, rr.Routes, _ = r.Present()
		rep.Routing = rr
	}
	rep.Listeners = map[string]uint64{
		"ipv4": att.ListenerCookie(loader.ListenerV4),
		"ipv6": att.ListenerCookie(loader.ListenerV6),
	}
	if rep.Counters, err = att.Counters(); err != nil {
		return nil, err
	}
	if socks, dirs, user, err := att.Relay().Entries(); err == nil {
		rep.Relay = &report.RelayReport{Sockets: socks, Directions: dirs, UserCounts: user}
	}
	rep.OwnerPID, rep.OwnerAlive = att.Owner()
	rep.Problems = append(att.Problems(), ifaceProblems(rep.Daemon)...)
	rep.Policy = policyOf(att)
	rep.Serving = rep.Daemon != nil && rep.Listeners["ipv4"] != 0 && len(rep.Problems) == 0
	return rep, nil
}

// printStatus writes `pepsal status`: the attachment, the daemon, then the
// kernel's tables.
func printStatus(w io.Writer, rep *report.StatusReport) {
	if !rep.Attached {
		fmt.Fprintln(w, "attached:  no (nothing in this network namespace)")
	} else {
		printAttachment(w, rep)
		printPolicy(w, rep.Policy)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "problem:   %s\n", p)
	}
	switch {
	case rep.Daemon != nil:
		printDaemon(w, rep.Daemon)
	case rep.DaemonNote == "" || strings.HasPrefix(rep.DaemonNote, report.ErrNoDaemon.Error()):
		fmt.Fprintln(w, "daemon:    not running in this network namespace")
	default: // refused, busy, or not pepsal's: said, never taken for absent
		fmt.Fprintf(w, "daemon:    not reached: %s\n", rep.DaemonNote)
	}
	if r := rep.Relay; r != nil {
		fmt.Fprintf(w, "relay map: %d sockets, %d directions, %d user counts\n", r.Sockets, r.Directions, r.UserCounts)
	}
	if len(rep.Counters) > 0 {
		fmt.Fprintln(w, "counters:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, c := range rep.Counters {
			fmt.Fprintf(tw, "  %s\t%d\n", c.Name, c.Value)
		}
		tw.Flush()
	}
}

// printAttachment writes what is attached: where it is pinned, who removes
// it, the interfaces, programs, routing and listeners.
func printAttachment(w io.Writer, rep *report.StatusReport) {
	fmt.Fprintf(w, "attached:  yes, pinned in %s\n", rep.PinDir)
	switch {
	case rep.OwnerPID == 0:
		fmt.Fprintln(w, "owner:     none, persistent (pepsal attach)")
	case rep.OwnerAlive:
		fmt.Fprintf(w, "owner:     pepsal run pid %d, removes it when it stops\n", rep.OwnerPID)
	default:
		fmt.Fprintf(w, "owner:     pepsal run pid %d, dead (the next `pepsal run --iface` adopts it)\n", rep.OwnerPID)
	}
	for _, i := range rep.Ifaces {
		what := "new connections split"
		if i.ReturnOnly {
			what = "replies to transparent connections only"
		}
		fmt.Fprintf(w, "iface:     %s (ifindex %d, %s ingress): %s\n", i.Name, i.Index, i.TCMode, what)
	}
	names := make([]string, 0, len(rep.Programs))
	for name := range rep.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "program:   %s id %d\n", name, rep.Programs[name])
	}
	if r := rep.Routing; r != nil {
		fmt.Fprintf(w, "routing:   fwmark %#x -> table %d (rule priority %d): %d/2 rules, %d/2 local routes\n",
			r.Fwmark, r.Table, r.RulePriority, r.Rules, r.Routes)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		state := "not registered"
		if c := rep.Listeners[fam]; c != 0 {
			state = fmt.Sprintf("registered (socket cookie %d)", c)
		}
		fmt.Fprintf(w, "listener:  %s %s\n", fam, state)
	}
}

// printDaemon writes what the daemon says of itself: its relay, what is
// off, its connections, limit, bytes, warm paths and runtime.
func printDaemon(w io.Writer, d *report.DaemonInfo) {
	fmt.Fprintf(w, "daemon:    pid %d, %s relay, up %s, listening on %v\n", d.PID, d.Relay,
		(time.Duration(d.UptimeSeconds) * time.Second).String(), d.Listeners)
	printRole(w, d)
	for _, o := range d.Off {
		fmt.Fprintf(w, "off:       %s\n", o)
	}
	printForwardFilter(w, d.ForwardFilter)
	printInterfaces(w, d)
	s := d.Stats
	fmt.Fprintf(w, "conns:     %d active, %d accepted, %d completed, %d reset, %d upstream failed, %d refused (loop), %d refused (destination), %d relayed in userspace instead of the kernel\n",
		s.Active, s.Accepted, s.Completed, s.Reset, s.UpstreamFailed, s.LoopRefused, s.DestDenied, s.Fallback)
	printDenied(w, s)
	if s.MaxConns > 0 {
		state := "splitting new connections"
		if s.Full {
			state = "FULL: new connections forwarded unsplit"
		}
		fmt.Fprintf(w, "limit:     %d connections (split again below %d), fd limit %d: %s; full %d times, %d resource shortages\n",
			s.MaxConns, s.LowWater, s.FDLimit, state, s.FullTrips, s.Shortages)
	}
	printListen(w, d.Listen)
	if s.MaxConnsPerClient > 0 {
		fmt.Fprintf(w, "per client: %d connections (split again below %d): %d client(s) at it now, their new connections forwarded unsplit; reached %d times\n",
			s.MaxConnsPerClient, s.LowWaterPerClient, s.ClientsAtLimit, s.ClientLimitTrips)
	}
	fmt.Fprintf(w, "bytes:     %d to servers, %d to clients (closed connections)", s.BytesToServer, s.BytesToClient)
	if d.Relay == relay.ModeSockmap.String() {
		fmt.Fprintf(w, ", %s moved by the kernel", share(s.KernelBytes, s.BytesToServer+s.BytesToClient))
	}
	fmt.Fprintln(w)
	printPeer(w, d.Peer)
	fmt.Fprintf(w, "runtime:   %d goroutines, %d open fds, %.1f MiB Go heap\n", d.Goroutines, d.OpenFDs, float64(d.HeapBytes)/(1<<20))
}

// printListen says the listeners' backlog and how the namespace's listen
// queues fared (every listener of the namespace counts).
func printListen(w io.Writer, l report.ListenStats) {
	if l.Backlog == 0 && l.Unreadable == "" {
		return // a daemon from before the backlog was reported
	}
	fmt.Fprintf(w, "listen:    backlog %d; in this namespace: ", l.Backlog)
	if l.Unreadable != "" {
		fmt.Fprintf(w, "counters unreadable (%s)\n", l.Unreadable)
		return
	}
	fmt.Fprintf(w, "%d SYN cookies sent, %d received, %d failed; %d listen overflows, %d listen drops\n",
		l.CookiesSent, l.CookiesRecv, l.CookiesFailed, l.Overflows, l.Drops)
}

// printDenied says why destinations were refused, when some were.
func printDenied(w io.Writer, s report.Stats) {
	if s.DestDenied == 0 {
		return
	}
	var why []string
	for _, r := range conn.DenyReasons() {
		if n := s.DestDeniedByReason[r.String()]; n > 0 {
			why = append(why, fmt.Sprintf("%d %s", n, r))
		}
	}
	fmt.Fprintf(w, "refused:   destinations pepsal does not connect to: %s\n", strings.Join(why, ", "))
}

func connsCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "conns",
		Short: "List the live split connections",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var conns []report.ConnInfo
			if err := e.query("conns", &conns); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if conns == nil {
					conns = []report.ConnInfo{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(conns)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCLIENT\tSERVER\tRELAY\tSTATE\tTO SERVER\tTO CLIENT\tAGE\tCLIENT LEG\tSERVER LEG")
			for _, c := range conns {
				via := c.Relay
				if via == "kernel" {
					via += " " + share(uint64(c.KernelBytesToServer+c.KernelBytesToClient), uint64(c.BytesToServer+c.BytesToClient))
				}
				if c.Peer != "" {
					via += ", " + c.Peer // rode a warm path between two pepsals
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", c.ID, c.Client, c.Server, via, c.State,
					c.BytesToServer, c.BytesToClient, (time.Duration(c.AgeSeconds*1e3) * time.Millisecond).String(),
					legSummary(c.ClientLeg), legSummary(c.ServerLeg))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// share is part of total as a percentage ("-" of nothing): how much of a
// kernel-relayed connection's data the kernel really moved, the rest having
// been left to userspace by the verdict (budget, order).
func share(part, total uint64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(part)/float64(total))
}

// legSummary is one leg in a few words: congestion control, cwnd, RTT, retransmits.
func legSummary(l *report.LegInfo) string {
	if l == nil {
		return "-"
	}
	return fmt.Sprintf("%s cwnd %d rtt %.1fms retr %d", l.CC, l.CwndSegs, float64(l.RTTMicros)/1000, l.Retransmits)
}

// printForwardFilter says what filters forwarded traffic (read at the
// daemon's start) and what --forward-filter does about it.
func printForwardFilter(w io.Writer, f *report.ForwardFilter) {
	if f == nil {
		return // a daemon from before --forward-filter
	}
	mark := ""
	if f.ServerMark != 0 {
		mark = fmt.Sprintf(", server legs marked %#x", f.ServerMark)
	}
	fmt.Fprintf(w, "forward:   --forward-filter=%s%s; forwarded traffic filtered at start by: %s\n", f.Mode, mark, f.Found)
}
