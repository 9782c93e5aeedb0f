// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"errors"
	"fmt"
)

// DeleteClientLink deletes the router's client-side interface (and with it
// its veth peer, the client's eth0), as a router's PPP or VLAN interface
// goes away. Only for a topology without a middle.
func (t *Topology) DeleteClientLink() error {
	if t.Link != nil {
		return errors.New("the client link runs through a middle: not recreated")
	}
	h, l, err := t.Router.link(RouterClientIf)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s in %s: %w", RouterClientIf, t.Router.Name, err)
	}
	return nil
}

// AddClientLink creates the router's client-side interface again, as
// NewTopology made it: a new veth pair (new ifindexes) with its peer moved
// into the client as eth0, both up, their addresses and the client's
// default routes. The old one must be gone (DeleteClientLink).
func (t *Topology) AddClientLink() error {
	if t.Link != nil {
		return errors.New("the client link runs through a middle: not recreated")
	}
	if err := Veth(t.Client, "eth0", t.Router, RouterClientIf); err != nil {
		return err
	}
	steps := []func() error{
		func() error { return t.Client.AddAddr("eth0", ClientV4+"/24") },
		func() error { return t.Client.AddAddr("eth0", ClientV6+"/64") },
		func() error { return t.Router.AddAddr(RouterClientIf, RouterClientV4+"/24") },
		func() error { return t.Router.AddAddr(RouterClientIf, RouterClientV6+"/64") },
		func() error { return t.Client.DefaultRoute(RouterClientV4) },
		func() error { return t.Client.DefaultRoute(RouterClientV6) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// RecreateClientLink deletes the router's client-side interface and
// creates it again (DeleteClientLink, AddClientLink).
func (t *Topology) RecreateClientLink() error {
	if err := t.DeleteClientLink(); err != nil {
		return err
	}
	return t.AddClientLink()
}
