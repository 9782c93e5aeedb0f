// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"cmp"
	"fmt"
	"io"
)

// Addresses of the routed topology, the same in every test bed (each lives in
// its own namespaces).
const (
	ClientV4       = "10.77.1.2"
	RouterClientV4 = "10.77.1.1"
	RouterServerV4 = "10.77.2.1"
	ServerV4       = "10.77.2.2"

	ClientV6       = "fd77:1::2"
	RouterClientV6 = "fd77:1::1"
	RouterServerV6 = "fd77:2::1"
	ServerV6       = "fd77:2::2"

	// Interface names inside the router namespace.
	RouterClientIf = "r-cli"
	RouterServerIf = "r-srv"
)

// Middle is something placed on the wire between client and router, given a
// namespace and its two interfaces (towards the client, towards the router).
// The link emulator is one. The returned Closer stops it.
type Middle func(ns *NS, towardClient, towardRouter string) (io.Closer, error)

// Options shape a Topology.
type Options struct {
	Prefix       string // namespace name prefix, default "pt"
	Middle       Middle // nil: client and router are directly connected
	ServerMiddle Middle // nil: router and server are directly connected
}

// Topology is client -- [middle] -- router -- [server middle] -- server over
// veth, dual stack.
// The router forwards; nothing is intercepted until pepsal is started in it.
type Topology struct {
	Client, Router, Server *NS
	Link                   *NS // only with Options.Middle
	ServerLink             *NS // only with Options.ServerMiddle
	nss                    nsSet
}

// NewTopology builds the namespaces, links, addresses and routes.
func NewTopology(opt Options) (topo *Topology, err error) {
	t := &Topology{nss: nsSet{prefix: cmp.Or(opt.Prefix, "pt")}}
	defer t.nss.closeOnError(&err)
	if err := t.nss.addAll(nsSlot{&t.Client, "cli"}, nsSlot{&t.Router, "rtr"}, nsSlot{&t.Server, "srv"}); err != nil {
		return nil, err
	}
	if t.Link, err = t.nss.link(opt.Middle, "lnk", t.Client, "eth0", "m-cli", t.Router, RouterClientIf, "m-rtr"); err != nil {
		return nil, err
	}
	if t.ServerLink, err = t.nss.link(opt.ServerMiddle, "slk", t.Server, "eth0", "m-srv", t.Router, RouterServerIf, "m-rtr"); err != nil {
		return nil, err
	}

	steps := []func() error{
		func() error { return t.Client.AddAddr("eth0", ClientV4+"/24") },
		func() error { return t.Client.AddAddr("eth0", ClientV6+"/64") },
		func() error { return t.Router.AddAddr(RouterClientIf, RouterClientV4+"/24") },
		func() error { return t.Router.AddAddr(RouterClientIf, RouterClientV6+"/64") },
		func() error { return t.Router.AddAddr(RouterServerIf, RouterServerV4+"/24") },
		func() error { return t.Router.AddAddr(RouterServerIf, RouterServerV6+"/64") },
		func() error { return t.Server.AddAddr("eth0", ServerV4+"/24") },
		func() error { return t.Server.AddAddr("eth0", ServerV6+"/64") },
		func() error { return t.Client.DefaultRoute(RouterClientV4) },
		func() error { return t.Client.DefaultRoute(RouterClientV6) },
		func() error { return t.Server.DefaultRoute(RouterServerV4) },
		func() error { return t.Server.DefaultRoute(RouterServerV6) },
		func() error { return t.Router.Sysctl("net.ipv4.ip_forward", "1") },
		func() error { return t.Router.Sysctl("net.ipv6.conf.all.forwarding", "1") },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if err := t.nss.start(opt.Middle, t.Link, "m-cli", "m-rtr"); err != nil {
		return nil, fmt.Errorf("start middle: %w", err)
	}
	// The server-side emulator's "client side" faces the router, its "router side" the server.
	if err := t.nss.start(opt.ServerMiddle, t.ServerLink, "m-rtr", "m-srv"); err != nil {
		return nil, fmt.Errorf("start server-side middle: %w", err)
	}
	return t, nil
}

// Close stops the middles and deletes every namespace, even after a partial build.
func (t *Topology) Close() error { return t.nss.Close() }
