package testbed

import (
	"errors"
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
	middles                []io.Closer
	all                    []*NS
}

// NewTopology builds the namespaces, links, addresses and routes.
func NewTopology(opt Options) (topo *Topology, err error) {
	if opt.Prefix == "" {
		opt.Prefix = "pt"
	}
	t := &Topology{}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	mk := func(role string) (*NS, error) {
		ns, err := NewNS(opt.Prefix + "-" + role)
		if err != nil {
			return nil, err
		}
		t.all = append(t.all, ns)
		return ns, nil
	}
	if t.Client, err = mk("cli"); err != nil {
		return nil, err
	}
	if t.Router, err = mk("rtr"); err != nil {
		return nil, err
	}
	if t.Server, err = mk("srv"); err != nil {
		return nil, err
	}

	if opt.Middle == nil {
		if err := Veth(t.Client, "eth0", t.Router, RouterClientIf); err != nil {
			return nil, err
		}
	} else {
		if t.Link, err = mk("lnk"); err != nil {
			return nil, err
		}
		if err := Veth(t.Client, "eth0", t.Link, "m-cli"); err != nil {
			return nil, err
		}
		if err := Veth(t.Link, "m-rtr", t.Router, RouterClientIf); err != nil {
			return nil, err
		}
	}
	if opt.ServerMiddle == nil {
		if err := Veth(t.Server, "eth0", t.Router, RouterServerIf); err != nil {
			return nil, err
		}
	} else {
		if t.ServerLink, err = mk("slk"); err != nil {
			return nil, err
		}
		// The emulator's "client side" faces the router, its "router side" the server.
		if err := Veth(t.ServerLink, "m-rtr", t.Router, RouterServerIf); err != nil {
			return nil, err
		}
		if err := Veth(t.ServerLink, "m-srv", t.Server, "eth0"); err != nil {
			return nil, err
		}
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
	if opt.Middle != nil {
		m, err := opt.Middle(t.Link, "m-cli", "m-rtr")
		if err != nil {
			return nil, fmt.Errorf("start middle: %w", err)
		}
		t.middles = append(t.middles, m)
	}
	if opt.ServerMiddle != nil {
		m, err := opt.ServerMiddle(t.ServerLink, "m-rtr", "m-srv")
		if err != nil {
			return nil, fmt.Errorf("start server-side middle: %w", err)
		}
		t.middles = append(t.middles, m)
	}
	return t, nil
}

// Close stops the middle and deletes every namespace, even after a partial build.
func (t *Topology) Close() error {
	var errs []error
	for _, m := range t.middles {
		errs = append(errs, m.Close())
	}
	t.middles = nil
	for _, ns := range t.all {
		errs = append(errs, ns.Close())
	}
	t.all = nil
	return errors.Join(errs...)
}
