package conn

import "github.com/pepsal/pepsal/userspace/internal/enum"

// Outcome is how a connection ended. Its text is the metrics' label.
type Outcome uint8

const (
	Completed      Outcome = iota // both sides closed cleanly
	WasReset                      // a side reset, or the relay aborted
	UpstreamFailed                // the server refused, was unreachable or silent
	LoopRefused                   // the destination was the proxy itself
	// LocalFailed: the connection could not be split for want of a resource
	// of this host (fds, memory, ports), not because of the server.
	// Table.Remove does not count it: the pipeline counts it in its split
	// stats.
	LocalFailed
)

func outcomeNames() enum.Names {
	return enum.Names{"completed", "reset", "upstream_failed", "loop_refused", "local_failed"}
}

// String is the outcome's name, as the metrics label it.
func (o Outcome) String() string { return outcomeNames().Of(uint8(o), "outcome") }

// UnmarshalText reads what String wrote.
func (o *Outcome) UnmarshalText(text []byte) error {
	return parseInto(o, outcomeNames(), text, "outcome")
}
