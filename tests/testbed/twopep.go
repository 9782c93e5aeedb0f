// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"cmp"
	"fmt"
)

// Addresses of the two-PEP topology. They differ from the single-router ones
// so that a reader of a packet trace can tell the two test beds apart.
const (
	TPClientV4       = "10.78.1.2"
	TerminalClientV4 = "10.78.1.1"
	TerminalLinkV4   = "10.78.3.1"
	GatewayLinkV4    = "10.78.3.2"
	GatewayServerV4  = "10.78.2.1"
	TPServerV4       = "10.78.2.2"
	TPClientV6       = "fd78:1::2"
	TerminalClientV6 = "fd78:1::1"
	TerminalLinkV6   = "fd78:3::1"
	GatewayLinkV6    = "fd78:3::2"
	GatewayServerV6  = "fd78:2::1"
	TPServerV6       = "fd78:2::2"
	TerminalClientIf = "t-cli" // terminal, toward the client: its PEP intercepts here
	TerminalLinkIf   = "t-sat" // terminal, toward the satellite link
	GatewayLinkIf    = "g-sat" // gateway, toward the satellite link: its PEP intercepts here
	GatewayServerIf  = "g-srv" // gateway, toward the server
	tpClientV4Net    = "10.78.1.0/24"
	tpClientV6Net    = "fd78:1::/64"
	tpLinkTowardTerm = "m-term"
	tpLinkTowardGw   = "m-gw"
)

// TwoPEP is client -- terminal -- [middle] -- gateway -- server, the layout of
// a satellite network with a PEP at each end of the link (the terminal at the
// user's site, the gateway at the ground station). Terminal and gateway both
// forward; nothing is intercepted until pepsal is started in them.
type TwoPEP struct {
	Client, Terminal, Gateway, Server *NS
	Link                              *NS // only with Options.Middle
	nss                               nsSet
}

// NewTwoPEP builds the namespaces, links, addresses and routes, dual stack.
func NewTwoPEP(opt Options) (topo *TwoPEP, err error) {
	t := &TwoPEP{nss: nsSet{prefix: cmp.Or(opt.Prefix, "tp")}}
	defer t.nss.closeOnError(&err)
	if err := t.nss.addAll(nsSlot{&t.Client, "cli"}, nsSlot{&t.Terminal, "trm"}, nsSlot{&t.Gateway, "gw"}, nsSlot{&t.Server, "srv"}); err != nil {
		return nil, err
	}
	if err := Veth(t.Client, "eth0", t.Terminal, TerminalClientIf); err != nil {
		return nil, err
	}
	if t.Link, err = t.nss.link(opt.Middle, "lnk", t.Terminal, TerminalLinkIf, tpLinkTowardTerm, t.Gateway, GatewayLinkIf, tpLinkTowardGw); err != nil {
		return nil, err
	}
	if err := Veth(t.Server, "eth0", t.Gateway, GatewayServerIf); err != nil {
		return nil, err
	}

	addrs := []struct {
		ns     *NS
		ifname string
		cidrs  []string
	}{
		{t.Client, "eth0", []string{TPClientV4 + "/24", TPClientV6 + "/64"}},
		{t.Terminal, TerminalClientIf, []string{TerminalClientV4 + "/24", TerminalClientV6 + "/64"}},
		{t.Terminal, TerminalLinkIf, []string{TerminalLinkV4 + "/24", TerminalLinkV6 + "/64"}},
		{t.Gateway, GatewayLinkIf, []string{GatewayLinkV4 + "/24", GatewayLinkV6 + "/64"}},
		{t.Gateway, GatewayServerIf, []string{GatewayServerV4 + "/24", GatewayServerV6 + "/64"}},
		{t.Server, "eth0", []string{TPServerV4 + "/24", TPServerV6 + "/64"}},
	}
	for _, a := range addrs {
		for _, c := range a.cidrs {
			if err := a.ns.AddAddr(a.ifname, c); err != nil {
				return nil, err
			}
		}
	}
	steps := []func() error{
		func() error { return t.Client.DefaultRoute(TerminalClientV4) },
		func() error { return t.Client.DefaultRoute(TerminalClientV6) },
		// The terminal sends everything that is not local over the link.
		func() error { return t.Terminal.DefaultRoute(GatewayLinkV4) },
		func() error { return t.Terminal.DefaultRoute(GatewayLinkV6) },
		// The gateway reaches the Internet (the server) directly and the
		// client's network through the terminal.
		func() error { return t.Gateway.Route(tpClientV4Net, TerminalLinkV4) },
		func() error { return t.Gateway.Route(tpClientV6Net, TerminalLinkV6) },
		func() error { return t.Server.DefaultRoute(GatewayServerV4) },
		func() error { return t.Server.DefaultRoute(GatewayServerV6) },
	}
	for _, ns := range []*NS{t.Terminal, t.Gateway} {
		steps = append(steps,
			func() error { return ns.Sysctl("net.ipv4.ip_forward", "1") },
			func() error { return ns.Sysctl("net.ipv6.conf.all.forwarding", "1") })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if err := t.nss.start(opt.Middle, t.Link, tpLinkTowardTerm, tpLinkTowardGw); err != nil {
		return nil, fmt.Errorf("start middle: %w", err)
	}
	return t, nil
}

// Close stops the middle and deletes every namespace, even after a partial build.
func (t *TwoPEP) Close() error { return t.nss.Close() }
