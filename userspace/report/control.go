package report

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// ControlAddr is the daemon's control socket. Abstract unix sockets belong to
// the network namespace, so `pepsal status` finds the daemon of its own
// namespace and never another's, and the name vanishes with the process.
const ControlAddr = "@pepsal-control"

// Query asks the daemon of this namespace; out receives the decoded JSON.
func Query(request string, out any) error {
	conn, err := net.DialTimeout("unix", ControlAddr, 2*time.Second)
	if err != nil {
		return fmt.Errorf("no pepsal daemon in this network namespace: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, request); err != nil {
		return err
	}
	if err := json.NewDecoder(conn).Decode(out); err != nil {
		return fmt.Errorf("read daemon answer: %w", err)
	}
	return nil
}
