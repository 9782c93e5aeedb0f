package integration

import "testing"

// relayMode is the relay the daemons of the running suite use.
var relayMode = "splice"

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
