// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pepsal/pepsal/userspace/daemon"
	"github.com/pepsal/pepsal/userspace/peer"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// The domain's errors name no flag; the CLI says them with the flag, in the
// words it always used (scripts and tests match them).
func TestFlagNamesInErrors(t *testing.T) {
	legErr := func(l tuning.Leg) error { return legFlagErr(l.Validate("client")) }
	_, roleErr := (&tuningFlags{role: "satellite"}).tuning(runCmd(&env{}))
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, peerErr := peer.Listen(taken.Addr().String(), tuning.Tuning{})
	if !errors.Is(peerErr, unix.EADDRINUSE) {
		t.Errorf("%v: EADDRINUSE lost", peerErr)
	}
	// proxy.Listen needs IP_TRANSPARENT (root): its error, from a real bind.
	_, bindErr := net.Listen("tcp4", taken.Addr().String())
	var proxyErr error = &proxy.ListenError{What: "proxy", Addr: taken.Addr().String(), Err: bindErr}
	if !errors.Is(proxyErr, unix.EADDRINUSE) {
		t.Errorf("%v: EADDRINUSE lost", proxyErr)
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{roleErr, `--role must be auto, gateway, terminal or none, not "satellite"`},
		{legErr(tuning.Leg{MSS: 5}), "--client-mss 5 is out of range (88-65495)"},
		{legErr(tuning.Leg{SndBuf: -1}), "--client buffer sizes must not be negative"},
		{legErr(tuning.Leg{InitCwnd: 5000}), "--client-initcwnd must be <= 4096 and initrwnd <= 65535"},
		{legErr(tuning.Leg{KeepAlive: time.Millisecond}), "--keepalive 1ms: want 0 (off) or 1s to 8h"},
		{legErr(tuning.Leg{UserTimeout: -1}), "--user-timeout -1ns: want 0 (kernel default) or 1ms to 24h"},
		{flagErr(peerErr), "--peer-listen " + taken.Addr().String() + ": address in use"},
		{flagErr(proxyErr), "listener port in use: " + taken.Addr().String()},
		{flagErr(&proxy.ListenError{What: "metrics", Addr: "x", Err: unix.EADDRINUSE}), "--metrics-addr: address already in use"},
		{flagErr(daemon.ErrUpgradeMetrics), "upgrade: --metrics-addr differs from the running daemon's"},
	} {
		if c.err == nil || c.err.Error() != c.want {
			t.Errorf("error %q, want %q", c.err, c.want)
		}
	}
	// The domain's own texts.
	var role tuning.Role
	rawRole := role.UnmarshalText([]byte("satellite"))
	_, rawKey := peer.LoadKeys("")
	for _, e := range []error{rawRole, rawKey, peerErr, tuning.Leg{MSS: 5}.Validate("client"), tuning.Leg{KeepAlive: 1}.Validate("client")} {
		if e == nil || strings.Contains(e.Error(), "--") {
			t.Errorf("domain error %q: want one, without a flag name", e)
		}
	}
}
