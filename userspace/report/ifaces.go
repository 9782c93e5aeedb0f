// SPDX-License-Identifier: Apache-2.0

package report

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
