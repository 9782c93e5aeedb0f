// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// Topo names a test bed layout.
type Topo string

const (
	// Gateway: client -- link -- router(PEP) -- server. The PEP sits at the
	// ground-station end and intercepts on its link-facing interface.
	Gateway Topo = "gateway PEP"
	// TwoPEP: client -- terminal(PEP) -- link -- gateway(PEP) -- server.
	TwoPEP Topo = "two PEPs"
	// Plain: client -- router(PEP) -- server over bare veth, to measure the
	// relay itself.
	Plain Topo = "plain veth"
)

// serverPort is where the traffic server listens.
const serverPort = "5201"

// Bed is a built test bed with its traffic server running.
type Bed struct {
	Topo   Topo
	Client *testbed.NS
	Server *Server
	SrvNS  *testbed.NS // where Server runs
	Sites  []Site      // where the PEPs run, in start order

	closeTopo func() error
	bridge    *linkemu.Bridge
}

// LinkStats are the emulated link's counters; ok is false on bare veth.
func (b *Bed) LinkStats() (st linkemu.Stats, ok bool) {
	if b.bridge == nil {
		return st, false
	}
	return b.bridge.Stats(), true
}

// NewBed builds the topology (with the emulated link when link is not nil)
// and starts the traffic server, whose sockets use congestion control cc.
func NewBed(topo Topo, link *linkemu.Link, prefix, cc string) (*Bed, error) {
	b := &Bed{Topo: topo}
	var middle testbed.Middle
	if link != nil {
		// Keep the bridge for its counters: they tell whether the emulator
		// kept up with the load of the machine.
		middle = func(ns *testbed.NS, towardClient, towardRouter string) (io.Closer, error) {
			br, err := linkemu.Start(ns, towardClient, towardRouter, *link)
			if err != nil {
				return nil, err
			}
			b.bridge = br
			return br, nil
		}
	}
	opt := testbed.Options{Prefix: prefix, Middle: middle}
	var (
		serverNS *testbed.NS
		serverIP string
	)
	switch topo {
	case Gateway, Plain:
		if topo == Plain {
			opt.Middle = nil
		}
		t, err := testbed.NewTopology(opt)
		if err != nil {
			return nil, fmt.Errorf("%s test bed: %w", topo, err)
		}
		b.closeTopo = t.Close
		b.Client, serverNS, serverIP = t.Client, t.Server, testbed.ServerV4
		b.Sites = []Site{{Name: "router", NS: t.Router, Iface: testbed.RouterClientIf}}
	case TwoPEP:
		t, err := testbed.NewTwoPEP(opt)
		if err != nil {
			return nil, fmt.Errorf("%s test bed: %w", topo, err)
		}
		b.closeTopo = t.Close
		b.Client, serverNS, serverIP = t.Client, t.Server, testbed.TPServerV4
		b.Sites = []Site{
			{Name: "gateway", NS: t.Gateway, Iface: testbed.GatewayLinkIf},
			{Name: "terminal", NS: t.Terminal, Iface: testbed.TerminalClientIf},
		}
	default:
		return nil, fmt.Errorf("unknown topology %q", topo)
	}
	srv, err := StartServer(serverNS, net.JoinHostPort(serverIP, serverPort), cc)
	if err != nil {
		b.closeTopo()
		return nil, err
	}
	b.Server, b.SrvNS = srv, serverNS
	return b, nil
}

// Close stops the server and deletes the namespaces. Proxies must have been
// stopped first (their pins live in the shared bpffs, not in the namespace).
func (b *Bed) Close() error {
	if b.Server != nil {
		b.Server.Close()
	}
	return b.closeTopo()
}

// DescribeLink summarises an emulated link in one phrase.
func DescribeLink(l linkemu.Link) string {
	rtt := l.Down.Delay + l.Up.Delay
	parts := []string{fmt.Sprintf("RTT %s", rtt)}
	rate := func(bps int64) string {
		if bps == 0 {
			return "unlimited"
		}
		return FormatRate(float64(bps))
	}
	parts = append(parts, fmt.Sprintf("%s down / %s up", rate(l.Down.RateBps), rate(l.Up.RateBps)))
	if l.Down.Loss > 0 || l.Up.Loss > 0 {
		parts = append(parts, fmt.Sprintf("loss %g%% each way", l.Down.Loss*100))
	}
	return strings.Join(parts, ", ")
}

func topoPicture(t Topo) string {
	switch t {
	case Gateway:
		return "client -- link -- router(PEP) -- server"
	case TwoPEP:
		return "client -- terminal(PEP) -- link -- gateway(PEP) -- server"
	case Plain:
		return "client -- router(PEP) -- server over veth"
	}
	return string(t)
}
