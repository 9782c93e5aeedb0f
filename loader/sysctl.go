// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	sysctlEarlyDemux = "net/ipv4/tcp_early_demux" // this namespace's, for IPv4 and IPv6
	sysctlFastOpen   = "net/ipv4/tcp_fastopen"
	sysctlTWReuse    = "net/ipv4/tcp_tw_reuse" // this namespace's, for IPv4 and IPv6
)

func readSysctlInt(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return v, nil
}

func writeSysctl(name string, v int) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("set %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return nil
}

// restoreSysctl puts back a value recorded plus one (0: never changed).
func restoreSysctl(name string, plusOne uint32) error {
	if plusOne == 0 {
		return nil
	}
	return writeSysctl(name, int(plusOne)-1)
}

// RecordFastOpenRestore remembers the net.ipv4.tcp_fastopen value to put
// back at detach (also after a killed daemon). Only the first record counts.
func (a *Attachment) RecordFastOpenRestore(old int) error {
	c, err := a.Config()
	if err != nil {
		return err
	}
	if c.FastopenRestore != 0 {
		return nil
	}
	c.FastopenRestore = uint32(old) + 1
	return a.maps.PepsalConfig.Put(uint32(0), c)
}
