// SPDX-License-Identifier: Apache-2.0

package report

import "fmt"

// IfaceHealth is how an interface the daemon was given (--iface,
// --return-iface) stands: the daemon follows it by name, and puts the
// classifier back when an interface of that name is created again.
type IfaceHealth struct {
	Name       string `json:"name"`
	Ifindex    int    `json:"ifindex"`  // now; 0: no interface of that name
	Attached   bool   `json:"attached"` // the classifier is on it: its connections are split
	ReturnOnly bool   `json:"return_only,omitempty"`
	// Losses counts the times the interface went (deleted, or its
	// classifier removed); Reattached the times the classifier was put
	// back on an interface of that name afterwards.
	Losses     uint64 `json:"losses"`
	Reattached uint64 `json:"reattached"`
	// SinceSeconds is how long it has stood as it does (attached or not).
	SinceSeconds float64 `json:"since_seconds"`
	// Error says why the classifier is not on an interface that exists.
	Error string `json:"error,omitempty"`
}

// IfaceProblems says, for each followed interface that splits nothing now,
// why (status and /healthz say the same).
func IfaceProblems(ifaces []IfaceHealth) []string {
	var out []string
	for _, i := range ifaces {
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
