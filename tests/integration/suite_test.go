// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/pepsal/pepsal/loader"
)

// suite is how a run of the tests starts its daemons. The relay suite's
// tests take it as an argument and each bed carries the one it was built
// with, so that a test cannot see another run's settings.
type suite struct {
	// relay is the daemons' --relay.
	relay string
	// offloadAfter is --offload-after in sockmap mode: "0" puts every
	// connection into the kernel at once, so that the whole suite runs
	// through the kernel relay; TestSockmapOffload hands connections over
	// from splice in the middle of their bytes; "" leaves the product's
	// default.
	offloadAfter string
	// wrapper, when set, runs every `pepsal run` through this command
	// (setpriv with the service's capability set, prlimit).
	wrapper []string
}

// defaultSuite is the settings of the tests that run once: splice, and in
// sockmap mode every connection in the kernel at once.
func defaultSuite() suite { return suite{relay: "splice", offloadAfter: "0"} }

// kernelRelayProbe is the product's own probe (loader.ProbeKernelRelay):
// the tests expect the kernel relay exactly where it says the kernel can.
var kernelRelayProbe = sync.OnceValue(loader.ProbeKernelRelay)

// relayInUse is the relay s's daemons use: splice where the kernel relay
// probe turns the asked kernel relay off (logged, so that a run says which
// relay its assertions checked).
func (s suite) relayInUse(t testing.TB) string {
	if s.relay != "sockmap" {
		return s.relay
	}
	err := kernelRelayProbe()
	var un *loader.Unsupported
	switch {
	case err == nil:
		return "sockmap"
	case errors.As(err, &un):
		t.Logf("%v: expecting splice", err)
		return "splice"
	}
	t.Fatalf("kernel relay probe: %v", err)
	return ""
}

// requireKernelRelay skips a test of the kernel relay itself where the
// product's probe turns it off.
func requireKernelRelay(t testing.TB) {
	if suite.relayInUse(suite{relay: "sockmap"}, t) != "sockmap" {
		t.Skipf("%v", kernelRelayProbe())
	}
}

// requireTCX skips a test of tcx links where the product's probe says the
// kernel has none (the classifier is then a clsact filter).
func requireTCX(t testing.TB) {
	var un *loader.Unsupported
	if err := loader.ProbeTCX(); errors.As(err, &un) {
		t.Skipf("%v", err)
	}
}

// inRelay is s with its daemons in relay mode relay.
func (s suite) inRelay(relay string) suite {
	s.relay = relay
	return s
}

// suiteCase is a behaviour test that takes the suite's settings.
type suiteCase struct {
	name string
	fn   func(*testing.T, suite)
}

// relaySuite is every behaviour of the proxy that a relay mode could change;
// TestSplice and TestSockmap run all of it, unchanged, in each relay mode.
// Tests of what happens before or beside the relay (the classifier passing
// packets, refused loops, flows older than the attachment) are plain Test
// functions that run once, and so are the cases of relayIndependent.
var relaySuite = []suiteCase{
	{"SplitIsSeenByServer", testSplitIsSeenByServer},
	{"ConcurrentTransfersIntact", testConcurrentTransfersIntact},
	{"HalfClose", testHalfClose},
	{"ResetPropagates", testResetPropagates},
	{"UpstreamFailureResetsClient", testUpstreamFailureResetsClient},
	{"DestinationPolicySplit", testDestinationPolicySplit},
	{"LateAccept", testLateAccept},
	{"EarlyClose", testEarlyClose},
	{"ConnsShowsConnection", testConnsShowsConnection},
	{"BigDownloadSlowClient", testBigDownloadSlowClient},
	{"MemoryBoundedSlowClient", testMemoryBoundedSlowClient},
	{"ManyIdleConnsCheap", testManyIdleConnsCheap},
	{"RandomStress", testRandomStress},
	{"ShortExchangesIntact", testShortExchangesIntact},
	{"TwoPEPFastOpen", testTwoPEPFastOpen},
	{"LoneTerminalFallsBack", testLoneTerminalFallsBack},
	{"Transparent", testTransparent},
	{"BothDirectionsAndOwnUpstream", testBothDirectionsAndOwnUpstream},
	{"KilledDaemonFailsOpenAndDetachCleans", testKilledDaemonFailsOpenAndDetachCleans},
	{"SIGTERMDetaches", testSIGTERMDetaches},
	{"AttachIdempotentAndDetach", testAttachIdempotentAndDetach},
	{"TwoNamespacesDoNotCollide", testTwoNamespacesDoNotCollide},
	{"RealNginxCurl", testRealNginxCurl},
	{"RealH2loadBurst", testRealH2loadBurst},
	{"RealSCP", testRealSCP},
	{"RealSocatHalfClose", testRealSocatHalfClose},
	{"AdmissionFailsOpen", testAdmissionFailsOpen},
	{"LegTimeouts", testLegTimeouts},
	{"LostResetFoundByKeepalive", testLostResetFoundByKeepalive},
	{"PeerTransparentGateway", testPeerTransparentGateway},
	{"PeerWarmPath", testPeerWarmPath},
	{"PeerUpstreamFailureResetsClient", testPeerUpstreamFailureResetsClient},
	{"DestinationPolicyWarm", testDestinationPolicyWarm},
	{"PeerFallback", testPeerFallback},
	{"SynCookiesSplit", testSynCookiesSplit},
	{"OutageAndHandovers", testOutageAndHandovers},
}

// relayIndependent are behaviours decided before any byte is relayed (the
// classifier's policy, the legs' socket options and initial windows, the
// upstream SYN's ToS): no relay mode changes them, so they run once.
var relayIndependent = []suiteCase{
	{"LegTuning", testLegTuning},
	{"DefaultsUntouched", testDefaultsUntouched},
	{"ToSCopied", testToSCopied},
	{"PolicyBypass", testPolicyBypass},
	{"TransparentPathMTU", testTransparentPathMTU},
	{"SynFloodNeverResets", testSynFloodNeverResets},
	{"OutageKick", testOutageKick},
}

// runSuite runs the cases named in keep, from the relay suite and then the
// relay-independent cases, with settings cfg.
func runSuite(t *testing.T, cfg suite, keep []string) {
	for _, tc := range slices.Concat(relaySuite, relayIndependent) {
		if slices.Contains(keep, tc.name) {
			t.Run(tc.name, func(t *testing.T) { tc.fn(t, cfg) })
		}
	}
}

// runCases runs cases with settings cfg.
func runCases(t *testing.T, cfg suite, cases []suiteCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, cfg) })
	}
}

func TestSplice(t *testing.T)  { runCases(t, defaultSuite(), relaySuite) }
func TestSockmap(t *testing.T) { runCases(t, defaultSuite().inRelay("sockmap"), relaySuite) }

// TestRelayIndependent runs the relay-independent cases once, with splice.
func TestRelayIndependent(t *testing.T) { runCases(t, defaultSuite(), relayIndependent) }

// offloadSuite is what a hand-over from splice to the kernel in the middle of
// a connection's bytes could break: order and completeness both ways, the
// half-close, resets, and the warm paths' bytes read and not relayed.
var offloadSuite = []string{"ConcurrentTransfersIntact", "HalfClose", "ResetPropagates", "BigDownloadSlowClient",
	"RandomStress", "ShortExchangesIntact", "RealNginxCurl", "RealSocatHalfClose", "PeerWarmPath"}

// TestSockmapOffload runs them with connections handed over from splice to
// the kernel after 4 KiB.
func TestSockmapOffload(t *testing.T) {
	requireKernelRelay(t) // otherwise every connection is spliced, as in TestSplice
	runSuite(t, suite{relay: "sockmap", offloadAfter: "4KiB"}, offloadSuite)
}
