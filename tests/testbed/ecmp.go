// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
)

// Addresses of the scale-out topology: clients reach servers through an edge
// router that spreads flows over two pepsal routers with an ECMP route.
const (
	ECMPClientV4 = "10.79.1.2"
	ECMPClientV6 = "fd79:1::2"
	ECMPServerV4 = "10.79.9.2"
	ECMPServerV6 = "fd79:9::2"
	ECMPEdgeIf   = "e-cli"  // edge router, toward the clients
	ECMPPepIf    = "p-edge" // each pepsal router, toward the edge: pepsal intercepts here
	ecmpServerIf = "p-srv"  // each pepsal router, toward the server
)

// ECMP is client -- edge ==(ECMP)== pep[0] | pep[1] -- server. The edge holds
// one route to the servers with a resilient next-hop group over both pepsal
// routers, hashing on the L4 tuple: each flow sticks to one box, and when a
// box leaves the group only its own flows move.
type ECMP struct {
	Client, Edge, Server *NS
	Peps                 [2]*NS
	nss                  nsSet
}

// PepServerV4 and PepServerV6 are the address pepsal router i dials servers
// from (what a server sees of a split flow through box i).
func PepServerV4(i int) string { return fmt.Sprintf("10.79.%d.1", 20+i) }
func PepServerV6(i int) string { return fmt.Sprintf("fd79:%d::1", 20+i) }
func pepEdgeV4(i int) string   { return fmt.Sprintf("10.79.%d.2", 10+i) }
func pepEdgeV6(i int) string   { return fmt.Sprintf("fd79:%d::2", 10+i) }
func edgePepV4(i int) string   { return fmt.Sprintf("10.79.%d.1", 10+i) }
func edgePepV6(i int) string   { return fmt.Sprintf("fd79:%d::1", 10+i) }

// NewECMP builds the namespaces, links, addresses, routes and the next-hop
// groups (through `ip nexthop`: netlink has no API for them here).
func NewECMP(prefix string) (topo *ECMP, err error) {
	t := &ECMP{nss: nsSet{prefix: cmp.Or(prefix, "ec")}}
	defer t.nss.closeOnError(&err)
	if err := t.nss.addAll(nsSlot{&t.Client, "cli"}, nsSlot{&t.Edge, "edg"}, nsSlot{&t.Server, "srv"},
		nsSlot{&t.Peps[0], "pep0"}, nsSlot{&t.Peps[1], "pep1"}); err != nil {
		return nil, err
	}
	if err := Veth(t.Client, "eth0", t.Edge, ECMPEdgeIf); err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return t.Client.AddAddr("eth0", ECMPClientV4+"/24") },
		func() error { return t.Client.AddAddr("eth0", ECMPClientV6+"/64") },
		func() error { return t.Edge.AddAddr(ECMPEdgeIf, "10.79.1.1/24") },
		func() error { return t.Edge.AddAddr(ECMPEdgeIf, "fd79:1::1/64") },
		func() error { return t.Client.DefaultRoute("10.79.1.1") },
		func() error { return t.Client.DefaultRoute("fd79:1::1") },
		func() error { return t.Edge.Sysctl("net.ipv4.ip_forward", "1") },
		func() error { return t.Edge.Sysctl("net.ipv6.conf.all.forwarding", "1") },
		// Hash on the L4 tuple, so that the flows of one client spread.
		func() error { return t.Edge.Sysctl("net.ipv4.fib_multipath_hash_policy", "1") },
		func() error { return t.Edge.Sysctl("net.ipv6.fib_multipath_hash_policy", "1") },
	}
	for i, pep := range t.Peps {
		edgeIf, srvIf := fmt.Sprintf("e-pep%d", i), fmt.Sprintf("s-pep%d", i)
		if err := Veth(t.Edge, edgeIf, pep, ECMPPepIf); err != nil {
			return nil, err
		}
		if err := Veth(t.Server, srvIf, pep, ecmpServerIf); err != nil {
			return nil, err
		}
		steps = append(steps,
			func() error { return t.Edge.AddAddr(edgeIf, edgePepV4(i)+"/24") },
			func() error { return t.Edge.AddAddr(edgeIf, edgePepV6(i)+"/64") },
			func() error { return pep.AddAddr(ECMPPepIf, pepEdgeV4(i)+"/24") },
			func() error { return pep.AddAddr(ECMPPepIf, pepEdgeV6(i)+"/64") },
			func() error { return pep.AddAddr(ecmpServerIf, PepServerV4(i)+"/24") },
			func() error { return pep.AddAddr(ecmpServerIf, PepServerV6(i)+"/64") },
			func() error { return t.Server.AddAddr(srvIf, fmt.Sprintf("10.79.%d.2/24", 20+i)) },
			func() error { return t.Server.AddAddr(srvIf, fmt.Sprintf("fd79:%d::2/64", 20+i)) },
			// Toward the clients through the edge, toward the servers direct.
			func() error { return pep.DefaultRoute(edgePepV4(i)) },
			func() error { return pep.DefaultRoute(edgePepV6(i)) },
			func() error { return pep.Route("10.79.9.0/24", fmt.Sprintf("10.79.%d.2", 20+i)) },
			func() error { return pep.Route("fd79:9::/64", fmt.Sprintf("fd79:%d::2", 20+i)) },
			func() error { return pep.Sysctl("net.ipv4.ip_forward", "1") },
			func() error { return pep.Sysctl("net.ipv6.conf.all.forwarding", "1") },
		)
	}
	// The server's service addresses sit on its first link; replies to the
	// clients of an unsplit flow go back through box 0 (routers keep no
	// per-flow state, so the asymmetry is harmless).
	steps = append(steps,
		func() error { return t.Server.AddAddr("s-pep0", ECMPServerV4+"/32") },
		func() error { return t.Server.AddAddr("s-pep0", ECMPServerV6+"/128") },
		func() error { return t.Server.Route("10.79.1.0/24", "10.79.20.1") },
		func() error { return t.Server.Route("fd79:1::/64", "fd79:20::1") },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	for _, cmd := range [][]string{
		{"nexthop", "add", "id", "1", "via", pepEdgeV4(0), "dev", "e-pep0"},
		{"nexthop", "add", "id", "2", "via", pepEdgeV4(1), "dev", "e-pep1"},
		{"nexthop", "add", "id", "3", "via", pepEdgeV6(0), "dev", "e-pep0"},
		{"nexthop", "add", "id", "4", "via", pepEdgeV6(1), "dev", "e-pep1"},
		{"nexthop", "add", "id", "10", "group", "1/2", "type", "resilient", "buckets", "64", "idle_timer", "0"},
		{"nexthop", "add", "id", "11", "group", "3/4", "type", "resilient", "buckets", "64", "idle_timer", "0"},
		{"route", "add", "10.79.9.0/24", "nhid", "10"},
		{"-6", "route", "add", "fd79:9::/64", "nhid", "11"},
	} {
		if err := t.Edge.ip(cmd...); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Withdraw takes pepsal router i out of the edge's next-hop groups, as a
// health check or a routing protocol does when a box fails: with resilient
// groups only the flows hashed to it move to the other box.
func (t *ECMP) Withdraw(i int) error {
	v4, v6 := []string{"1", "2"}, []string{"3", "4"}
	return errors.Join(
		t.Edge.ip("nexthop", "replace", "id", "10", "group", v4[1-i], "type", "resilient", "buckets", "64", "idle_timer", "0"),
		t.Edge.ip("nexthop", "replace", "id", "11", "group", v6[1-i], "type", "resilient", "buckets", "64", "idle_timer", "0"),
	)
}

func (n *NS) ip(args ...string) error {
	if out, err := n.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s in %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close deletes every namespace, even after a partial build.
func (t *ECMP) Close() error { return t.nss.Close() }
