// SPDX-License-Identifier: Apache-2.0

package testbed

import (
	"errors"
	"io"
)

// nsSet is what one topology builds: its namespaces, named prefix-role, and
// the middles running in them. Close undoes a partial build as completely
// as a whole one.
type nsSet struct {
	prefix  string
	all     []*NS
	middles []io.Closer
}

// nsSlot is a namespace to create for role, stored in *dst.
type nsSlot struct {
	dst  **NS
	role string
}

// add creates the namespace for role and keeps it for Close.
func (s *nsSet) add(role string) (*NS, error) {
	ns, err := NewNS(s.prefix + "-" + role)
	if err != nil {
		return nil, err
	}
	s.all = append(s.all, ns)
	return ns, nil
}

// addAll creates the namespaces of slots, in order.
func (s *nsSet) addAll(slots ...nsSlot) error {
	for _, sl := range slots {
		ns, err := s.add(sl.role)
		if err != nil {
			return err
		}
		*sl.dst = ns
	}
	return nil
}

// link connects a's aIf to b's bIf over veth: directly when m is nil,
// otherwise through a new namespace for role (where m will run), whose
// interfaces toA and toB face a and b. It returns that namespace, or nil.
func (s *nsSet) link(m Middle, role string, a *NS, aIf, toA string, b *NS, bIf, toB string) (*NS, error) {
	if m == nil {
		return nil, Veth(a, aIf, b, bIf)
	}
	mid, err := s.add(role)
	if err != nil {
		return nil, err
	}
	if err := Veth(a, aIf, mid, toA); err != nil {
		return nil, err
	}
	if err := Veth(mid, toB, b, bIf); err != nil {
		return nil, err
	}
	return mid, nil
}

// start runs m (if any) in ns between its interfaces toA and toB, and keeps
// it for Close.
func (s *nsSet) start(m Middle, ns *NS, toA, toB string) error {
	if m == nil {
		return nil
	}
	c, err := m(ns, toA, toB)
	if err != nil {
		return err
	}
	s.middles = append(s.middles, c)
	return nil
}

// closeOnError closes the set if *err is set: deferred by a constructor.
func (s *nsSet) closeOnError(err *error) {
	if *err != nil {
		s.Close()
	}
}

// Close stops the middles, then deletes every namespace added so far.
func (s *nsSet) Close() error {
	var errs []error
	for _, m := range s.middles {
		errs = append(errs, m.Close())
	}
	s.middles = nil
	for _, ns := range s.all {
		errs = append(errs, ns.Close())
	}
	s.all = nil
	return errors.Join(errs...)
}
