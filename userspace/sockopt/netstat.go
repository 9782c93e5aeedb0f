// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// TCPExt reads the TcpExt counters of /proc/self/net/netstat: those of
// this process's network namespace, every socket of it counted.
func TCPExt() (map[string]uint64, error) {
	data, err := os.ReadFile("/proc/self/net/netstat")
	if err != nil {
		return nil, fmt.Errorf("read netstat: %w", err)
	}
	return ParseNetstat(string(data), "TcpExt")
}

// ParseNetstat reads one section of /proc/net/netstat's format: a line of
// names and a line of values, both led by "<section>:".
func ParseNetstat(data, section string) (map[string]uint64, error) {
	prefix := section + ":"
	var names []string
	for _, line := range strings.Split(data, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if names == nil {
			names = fields
			continue
		}
		if len(fields) != len(names) {
			return nil, fmt.Errorf("netstat %s: %d names, %d values", section, len(names), len(fields))
		}
		out := make(map[string]uint64, len(names))
		for i, name := range names {
			v, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat %s %s: %w", section, name, err)
			}
			out[name] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("netstat: no %s section", section)
}
