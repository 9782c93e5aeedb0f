// SPDX-License-Identifier: Apache-2.0

package sockopt

import (
	"strings"
	"testing"
)

// TestParseNetstat: a section's names pair with its values; a section
// missing, cut short or with garbage is an error, not zeros.
func TestParseNetstat(t *testing.T) {
	data := "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows\nTcpExt: 7 3 12\nIpExt: InNoRoutes\nIpExt: 1\n"
	got, err := ParseNetstat(data, "TcpExt")
	if err != nil || got["SyncookiesSent"] != 7 || got["SyncookiesRecv"] != 3 || got["ListenOverflows"] != 12 || len(got) != 3 {
		t.Errorf("TcpExt: %v, %v", got, err)
	}
	if got, err := ParseNetstat(data, "IpExt"); err != nil || got["InNoRoutes"] != 1 {
		t.Errorf("IpExt: %v, %v", got, err)
	}
	for name, bad := range map[string]string{
		"no section":     "IpExt: A\nIpExt: 1\n",
		"names only":     "TcpExt: A B\n",
		"values short":   "TcpExt: A B\nTcpExt: 1\n",
		"not a number":   "TcpExt: A\nTcpExt: x\n",
		"negative value": "TcpExt: A\nTcpExt: -1\n",
	} {
		if _, err := ParseNetstat(bad, "TcpExt"); err == nil || !strings.Contains(err.Error(), "netstat") {
			t.Errorf("%s: %v, want an error", name, err)
		}
	}
}

// TestTCPExt: this namespace's TcpExt has the counters pepsal reports.
func TestTCPExt(t *testing.T) {
	got, err := TCPExt()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed"} {
		if _, ok := got[name]; !ok {
			t.Errorf("no TcpExt %s", name)
		}
	}
}
