// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/pepsal/pepsal/userspace/explain"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/spf13/cobra"
)

// explainReport is `pepsal explain --json`.
type explainReport struct {
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	Ingress string `json:"ingress,omitempty"`
	Route   string `json:"route,omitempty"`
	explain.Verdict
	Metric string `json:"metric,omitempty"` // the series the counter surfaces in
	Note   string `json:"note,omitempty"`   // what could not be checked
}

// explainCmd is a command of its own, not a `status` flag: it takes a flow
// as arguments and looks routes up, and status keeps its exit code (0 only
// when attached and serving) and its JSON.
func explainCmd(e *env) *cobra.Command {
	var iface string
	var synData, asJSON bool
	cmd := &cobra.Command{
		Use:   "explain SRC DST:PORT",
		Short: "Say whether a new connection from SRC to DST:PORT would be split, why, and which counter the classifier bumps",
		Long: "explain replays the classifier's decisions for a flow's first SYN over the maps it reads now (ports, exclusions, " +
			"interfaces, listeners, the admission flag, the per-client marks, the fast-open prefixes) and this router's routes, " +
			"then the daemon's destination policy (--deny, this host's addresses) for a SYN it would divert. The SYN is taken to " +
			"arrive on the interface of the route back to SRC unless --iface says otherwise.",
		Example: "  pepsal explain 192.168.1.20 203.0.113.7:443\n  pepsal explain --iface eth1 2001:db8::20 [2001:db8:1::7]:80",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			flow, err := parseFlow(args[0], args[1])
			if err != nil {
				return usage(err)
			}
			flow.SynData = synData
			rep, err := explainFlow(e, flow, iface)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printExplain(cmd.OutOrStdout(), rep)
			return nil
		},
	}
	cmd.Flags().StringVar(&iface, "iface", "", "the interface the SYN arrives on (default: where the route back to SRC leaves)")
	cmd.Flags().BoolVar(&synData, "syn-data", false, "the SYN carries data (TCP fast open)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// parseFlow reads SRC and DST:PORT.
func parseFlow(src, dst string) (explain.Flow, error) {
	s, err := netip.ParseAddr(src)
	if err != nil {
		return explain.Flow{}, fmt.Errorf("SRC %q is not an IP address", src)
	}
	d, err := netip.ParseAddrPort(dst)
	if err != nil || d.Port() == 0 {
		return explain.Flow{}, fmt.Errorf("DST %q is not ADDR:PORT (a port 1-65535; [ADDR]:PORT for IPv6)", dst)
	}
	if s.Unmap().Is4() != d.Addr().Unmap().Is4() {
		return explain.Flow{}, fmt.Errorf("SRC %s and DST %s are of different families", s, d.Addr())
	}
	return explain.Flow{Src: s.WithZone(""), Dst: netip.AddrPortFrom(d.Addr().WithZone(""), d.Port())}, nil
}

// explainFlow reads the classifier's maps, the routes and the daemon's
// policy, and decides.
func explainFlow(e *env, flow explain.Flow, iface string) (*explainReport, error) {
	if err := e.privileged(); err != nil {
		return nil, err
	}
	att, err := e.openAttachment()
	if err != nil {
		return nil, fmt.Errorf("read the classifier's maps: %w", err)
	}
	defer att.Close()
	state, err := att.ClassifierState()
	if err != nil {
		return nil, err
	}
	if err := explain.Locate(&flow, iface); err != nil {
		return nil, err
	}
	rep := &explainReport{Src: flow.Src.String(), Dst: flow.Dst.String(), Ingress: flow.Name}
	if flow.Ingress != 0 {
		rep.Route = flow.Route.String()
	}
	var info report.DaemonInfo
	if err := e.query("info", &info); err != nil {
		rep.Note = "daemon not reached (" + err.Error() + "): its destination policy is not checked"
	} else if flow.Denied, err = deniedBy(info.Deny, flow.Dst.Addr()); err != nil {
		return nil, err
	}
	rep.Verdict = explain.Decide(state, flow)
	if rep.Counter != "" {
		rep.Metric = fmt.Sprintf("pepsal_classifier_syns_total{decision=%q}", rep.Counter)
	}
	return rep, nil
}

// deniedBy is the daemon's destination policy's reason to refuse dst ("":
// none), with its --deny prefixes and this host's routes.
func deniedBy(deny []string, dst netip.Addr) (string, error) {
	var prefixes []netip.Prefix
	for _, s := range deny {
		if p, err := netip.ParsePrefix(s); err == nil {
			prefixes = append(prefixes, p)
		}
	}
	routes, err := proxy.OpenHostRoutes()
	if err != nil {
		return "", err
	}
	defer routes.Close()
	var denied *proxy.DeniedError
	if err := proxy.NewDestPolicy(prefixes, routes).Check(dst); errors.As(err, &denied) {
		return denied.Reason.String(), nil
	}
	return "", nil
}

func printExplain(w io.Writer, r *explainReport) {
	verdict := "not split"
	if r.Split {
		verdict = "split"
	}
	fmt.Fprintf(w, "flow:      %s -> %s\n", r.Src, r.Dst)
	if r.Ingress != "" {
		fmt.Fprintf(w, "arrives:   on %s; route: %s\n", r.Ingress, r.Route)
	}
	fmt.Fprintf(w, "verdict:   %s\n", verdict)
	fmt.Fprintf(w, "why:       %s\n", r.Why)
	if r.Counter != "" {
		fmt.Fprintf(w, "counter:   %s (%s)\n", r.Counter, r.Metric)
	}
	if r.DeniedReason != "" {
		fmt.Fprintf(w, "daemon:    pepsal_connections_denied_total{reason=%q}\n", r.DeniedReason)
	}
	if r.Note != "" {
		fmt.Fprintf(w, "note:      %s\n", r.Note)
	}
}
