// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// userHZ is the unit of /proc/stat. It is fixed at 100 in the kernel's ABI,
// whatever CONFIG_HZ is.
const userHZ = 100

// CPUTimes are the machine-wide counters of the "cpu" line of /proc/stat, in
// USER_HZ ticks.
type CPUTimes struct {
	Busy uint64 // user, nice, system, irq, softirq, steal (guest is inside user)
	Idle uint64 // idle, iowait
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat. Soft interrupts
// and kernel workers count as busy: a relay that moves work there is not free.
func ParseProcStat(r io.Reader) (CPUTimes, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 8 {
			return CPUTimes{}, fmt.Errorf("/proc/stat: short cpu line %q", sc.Text())
		}
		var v [8]uint64 // user nice system idle iowait irq softirq steal
		for i := range v {
			if i+1 >= len(f) {
				break
			}
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("/proc/stat: field %d: %w", i+1, err)
			}
			v[i] = n
		}
		return CPUTimes{
			Busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7],
			Idle: v[3] + v[4],
		}, nil
	}
	if err := sc.Err(); err != nil {
		return CPUTimes{}, fmt.Errorf("/proc/stat: %w", err)
	}
	return CPUTimes{}, fmt.Errorf("/proc/stat: no cpu line")
}

// BusySeconds is the non-idle CPU time between two samples, all CPUs added.
func BusySeconds(before, after CPUTimes) float64 {
	if after.Busy < before.Busy {
		return 0
	}
	return float64(after.Busy-before.Busy) / userHZ
}

// ReadCPU samples /proc/stat.
func ReadCPU() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	return ParseProcStat(bytes.NewReader(b))
}

// ParseKB reads "Key:   123 kB" lines (/proc/meminfo, /proc/PID/status) and
// returns the values in bytes for the keys that carry a kB unit.
func ParseKB(r io.Reader) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		out[strings.TrimSpace(key)] = n << 10
	}
	return out, sc.Err()
}

// Mem is the part of /proc/meminfo the memory benchmark reads, in bytes.
type Mem struct {
	Used int64 // MemTotal - MemAvailable
	Slab int64
}

// ParseMemInfo extracts Mem from /proc/meminfo.
func ParseMemInfo(r io.Reader) (Mem, error) {
	kv, err := ParseKB(r)
	if err != nil {
		return Mem{}, fmt.Errorf("/proc/meminfo: %w", err)
	}
	for _, k := range []string{"MemTotal", "MemAvailable", "Slab"} {
		if _, ok := kv[k]; !ok {
			return Mem{}, fmt.Errorf("/proc/meminfo: no %s", k)
		}
	}
	return Mem{Used: kv["MemTotal"] - kv["MemAvailable"], Slab: kv["Slab"]}, nil
}

// ReadMem samples /proc/meminfo.
func ReadMem() (Mem, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return Mem{}, err
	}
	return ParseMemInfo(bytes.NewReader(b))
}

// ReadRSS returns VmRSS of a process in bytes.
func ReadRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	kv, err := ParseKB(bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	rss, ok := kv["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, nil
}

// realPID follows a process started through nsenter to the program it runs:
// nsenter either execs it (same pid) or forks it (its only child).
func realPID(pid int) int {
	for range 3 {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "nsenter" {
			return pid
		}
		kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		f := strings.Fields(string(kids))
		if err != nil || len(f) == 0 {
			return pid
		}
		child, err := strconv.Atoi(f[0])
		if err != nil {
			return pid
		}
		pid = child
	}
	return pid
}

// ParseSockstatTCPMem returns the "mem" field of the TCP line of
// /proc/net/sockstat: pages charged to TCP socket buffers, machine-wide.
// Data queued outside TCP's accounting (a sockmap backlog) is not in it.
func ParseSockstatTCPMem(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				n, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("sockstat TCP mem: %w", err)
				}
				return n, nil
			}
		}
		return 0, fmt.Errorf("sockstat: no mem on the TCP line")
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("sockstat: no TCP line")
}

// ReadTCPMem is TCP's buffer memory in bytes.
func ReadTCPMem() (int64, error) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, err
	}
	pages, err := ParseSockstatTCPMem(bytes.NewReader(b))
	return pages * int64(os.Getpagesize()), err
}
