package integration

import (
	"slices"
	"testing"
)

// relayMode is the relay the daemons of the running suite use.
var relayMode = "splice"

// offloadAfter is the suite's --offload-after in sockmap mode: "0" puts
// every connection into the kernel at once, so that the whole suite runs
// through the kernel relay; TestSockmapOffload hands connections over from
// splice in the middle of their bytes; "" leaves the product's default.
var offloadAfter = "0"

// relaySuite is every behaviour of the proxy that a relay mode could change;
// TestSplice and TestSockmap run all of it, unchanged, in each relay mode.
// Tests of what happens before or beside the relay (the classifier passing
// packets, refused loops, flows older than the attachment) are plain Test
// functions that run once.
var relaySuite = []struct {
	name string
	fn   func(*testing.T)
}{
	{"SplitIsSeenByServer", testSplitIsSeenByServer},
	{"ConcurrentTransfersIntact", testConcurrentTransfersIntact},
	{"HalfClose", testHalfClose},
	{"ResetPropagates", testResetPropagates},
	{"UpstreamFailureResetsClient", testUpstreamFailureResetsClient},
	{"LateAccept", testLateAccept},
	{"EarlyClose", testEarlyClose},
	{"ConnsShowsConnection", testConnsShowsConnection},
	{"BigDownloadSlowClient", testBigDownloadSlowClient},
	{"MemoryBoundedSlowClient", testMemoryBoundedSlowClient},
	{"ManyIdleConnsCheap", testManyIdleConnsCheap},
	{"RandomStress", testRandomStress},
	{"ShortExchangesIntact", testShortExchangesIntact},
	{"LegTuning", testLegTuning},
	{"DefaultsUntouched", testDefaultsUntouched},
	{"ToSCopied", testToSCopied},
	{"TwoPEPFastOpen", testTwoPEPFastOpen},
	{"LoneTerminalFallsBack", testLoneTerminalFallsBack},
	{"Transparent", testTransparent},
	{"PolicyBypass", testPolicyBypass},
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
	{"PeerTransparentGateway", testPeerTransparentGateway},
	{"PeerWarmPath", testPeerWarmPath},
	{"PeerUpstreamFailureResetsClient", testPeerUpstreamFailureResetsClient},
	{"PeerFallback", testPeerFallback},
}

func runSuite(t *testing.T, relay string) {
	relayMode = relay
	defer func() { relayMode = "splice" }()
	for _, tc := range relaySuite {
		t.Run(tc.name, tc.fn)
	}
}

func TestSplice(t *testing.T)  { runSuite(t, "splice") }
func TestSockmap(t *testing.T) { runSuite(t, "sockmap") }

// offloadSuite is what a hand-over from splice to the kernel in the middle of
// a connection's bytes could break: order and completeness both ways, the
// half-close, resets, and the warm paths' bytes read and not relayed.
var offloadSuite = []string{"ConcurrentTransfersIntact", "HalfClose", "ResetPropagates", "BigDownloadSlowClient",
	"RandomStress", "ShortExchangesIntact", "RealNginxCurl", "RealSocatHalfClose", "PeerWarmPath"}

// TestSockmapOffload runs them with connections handed over from splice to
// the kernel after 4 KiB.
func TestSockmapOffload(t *testing.T) {
	relayMode, offloadAfter = "sockmap", "4KiB"
	defer func() { relayMode, offloadAfter = "splice", "0" }()
	for _, tc := range relaySuite {
		if slices.Contains(offloadSuite, tc.name) {
			t.Run(tc.name, tc.fn)
		}
	}
}
