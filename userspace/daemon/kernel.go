// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/pepsal/pepsal/loader"
	"github.com/pepsal/pepsal/userspace/proxy"
	"github.com/pepsal/pepsal/userspace/relay"
	"github.com/pepsal/pepsal/userspace/report"
	"github.com/pepsal/pepsal/userspace/sockopt"
	"github.com/pepsal/pepsal/userspace/tuning"
	"golang.org/x/sys/unix"
)

// ListenerRegistry steers diverted SYNs to the proxy's listeners
// (pepsal_listen; loader.Attachment implements it).
type ListenerRegistry interface {
	RegisterListener(slot uint32, fd int) error
	// ListenerCookie is the cookie of the socket in a slot, 0 if none.
	ListenerCookie(slot uint32) uint64
}

// Attachment is what the daemon needs of the BPF side it serves
// (loader.Attachment implements it).
type Attachment interface {
	ListenerRegistry
	proxy.DivertedSYNs
	// SetFull tells the classifier to forward new connections unsplit.
	SetFull(full bool) error
	// SetFastOpenFrom tells the classifier which SYNs carrying data it
	// may divert (check: the listeners take such data).
	SetFastOpenFrom(check bool, from []netip.Prefix) error
	// SetSourceFull tells the classifier to forward a client's new
	// connections unsplit; ClearSourcesFull forgets every such mark.
	SetSourceFull(addr netip.Addr, full bool) error
	ClearSourcesFull() error
	// RecordFastOpenRestore keeps the tcp_fastopen value a detach restores.
	RecordFastOpenRestore(old int) error
	// TakeOver makes this process the attachment's owner in place of fromPID.
	TakeOver(fromPID int) error
	Counters() ([]loader.Counter, error)
	Ifaces() ([]loader.Iface, error)
	// OwnedByMe: this process created the attachment (a detach will follow).
	OwnedByMe() bool
	// EnableKernelRelay probes the kernel and attaches the relay verdict; a
	// *loader.Unsupported error says why this kernel cannot relay safely.
	EnableKernelRelay() error
}

// Tuner is the sock_ops tuning as the daemon drives it (loader.Tuner).
type Tuner interface {
	proxy.UpstreamTuner
	SetLegs(client, server loader.LegTuning) error
	// SetPeerPort makes sock_ops tune the sockets of the warm-path listener.
	SetPeerPort(port uint16) error
	Close() error
}

// Kernel is the attached BPF side, as Options.Attach hands it over.
type Kernel struct {
	Attachment
	Tuner  Tuner      // nil: no sock_ops on this host
	Stalls StallsMap  // the long legs' timeouts; nil: none (no sock_ops)
	Relay  relay.Maps // the kernel relay's maps
	PinDir string     // for the log
	// Reattach puts the classifier back on the daemon's interfaces, by
	// name, where it is missing (loader.Attachment.Reattach); nil: the
	// daemon was given none (it serves `pepsal attach`'s attachment).
	Reattach func() ([]loader.Placed, error)
	// Close releases the handles (and removes what the daemon owns); the
	// daemon calls it last.
	Close func() error
}

var (
	_ Attachment = (*loader.Attachment)(nil)
	_ Tuner      = (*loader.Tuner)(nil)
)

var (
	_ ListenerRegistry = (*loader.Attachment)(nil)
	_ Attachment       = (*loader.Attachment)(nil)
	_ Tuner            = (*loader.Tuner)(nil)
)

// attachKernel attaches the BPF side (or opens the attachment), checks that
// no other daemon serves it, turns server-side fast open on, and steers
// the diverted SYNs to the proxy's listeners.
func (r *run) attachKernel() error {
	k, err := r.o.Attach()
	if err != nil {
		return err
	}
	r.k = k
	r.atEnd(func() { r.closeErr = k.Close() })
	ownAttachment := k.OwnedByMe()
	if cookie := firstListenerCookie(k); cookie != 0 && (r.inherited == nil || cookie != listenerCookie(r.inherited.V4)) {
		return ErrOtherDaemon
	}
	if err := r.enableFastOpen(ownAttachment); err != nil {
		return err
	}
	// A full flag left by a daemon killed at its limit must not outlive it,
	// nor a client's: this daemon counts its own connections.
	if err := k.SetFull(false); err != nil {
		return err
	}
	if err := k.ClearSourcesFull(); err != nil {
		return err
	}
	if err := r.trustFastOpen(); err != nil {
		return err
	}
	return r.registerListeners()
}

// enableFastOpen turns server-side fast open on (net.ipv4.tcp_fastopen)
// when the listeners accept it, and sees that the old value comes back:
// through the attachment's detach, or at exit when this daemon does not
// own the attachment (and was not replaced by an upgrade).
func (r *run) enableFastOpen(ownAttachment bool) error {
	if !r.o.Tuning.FastOpen.Accept {
		return nil
	}
	old, changed, err := tuning.EnableServerFastOpen()
	if err != nil {
		return err
	}
	if !changed {
		return nil
	}
	var oldV int
	fmt.Sscan(old, &oldV)
	if err := r.k.RecordFastOpenRestore(oldV); err != nil {
		return err
	}
	if !ownAttachment { // a detach would restore it; without one, the daemon does
		r.atEnd(func() {
			if !r.handedOver.Load() {
				sockopt.WriteSysctl("net/ipv4/tcp_fastopen", old)
			}
		})
	}
	return nil
}

// trustFastOpen tells the classifier where the listeners' SYN data may
// come from, before they are registered: where they take it (pepsal's
// fast open, or a net.ipv4.tcp_fastopen that makes every listener take it
// without a cookie), only from --fastopen-from.
func (r *run) trustFastOpen() error {
	fo := r.o.Tuning.FastOpen
	check := fo.Accept
	if !check && tuning.KernelTakesSYNData() {
		check = true
		r.log.Warn("net.ipv4.tcp_fastopen makes every listener take data in SYNs without a cookie: SYNs carrying data are forwarded unsplit")
	}
	if err := r.k.SetFastOpenFrom(check, fo.AcceptFrom); err != nil {
		return err
	}
	switch {
	case fo.Accept && len(fo.AcceptFrom) == 0:
		r.log.Info("SYNs carrying data are forwarded unsplit: no --fastopen-from")
	case fo.Accept:
		r.log.Info("data in SYNs taken from", "fastopen_from", fo.AcceptFrom)
	}
	return nil
}

// registerListeners sets each proxy listener's accept queue and puts it in
// its slot of pepsal_listen, where the diverted SYNs are steered.
func (r *run) registerListeners() error {
	r.backlog = r.listenBacklog()
	for _, l := range r.listeners {
		ln := l.ln
		// The accept queue the fd budget counts on (listen again only sets it).
		if err := sockopt.WithFD(ln, func(fd int) error { return unix.Listen(fd, r.backlog) }); err != nil {
			return fmt.Errorf("set listener backlog: %w", err)
		}
		if err := sockopt.WithFD(ln, func(fd int) error { return r.k.RegisterListener(l.slot, fd) }); err != nil {
			return err
		}
		r.addrs = append(r.addrs, ln.Addr().String())
	}
	return nil
}

// listenBacklog is the listeners' backlog: the one the fd budget was
// settled with, which follows --max-conns (proxy.ListenBacklog) up to
// net.core.somaxconn. The sysctl is the router's: pepsal says when it is
// the lower, once, and leaves it.
func (r *run) listenBacklog() int {
	o := r.o
	asked := proxy.ListenBacklog(o.MaxConns)
	got := o.FDBudget.Backlog
	if got <= 0 { // no budget settled (a daemon built without one)
		return asked
	}
	if got < asked {
		r.log.Warn("net.core.somaxconn caps the proxy listeners' backlog: SYNs past it get SYN cookies (the classifier steers their ACKs to the proxy); raise the sysctl for a longer queue",
			"backlog", got, "asked", asked, "max_conns", o.MaxConns)
	}
	return got
}

// settleRelay puts the kernel relay under the pipeline where the kernel
// can take it, and says (in the log, and for the status) what this host
// lacks and what is done instead. It runs once the pipeline and its warm
// paths are set up, as it always did.
func (r *run) settleRelay() error {
	o, log := r.o, r.log
	inUse, off, err := chooseRelay(o.Relay, r.k.EnableKernelRelay)
	if err != nil {
		return err
	}
	r.ifaces, _ = r.k.Ifaces()
	off = append(off, tcxOff(r.ifaces)...)
	off = append(off, windowOff(o.Tuning, ProbeLargeInitialWindow)...)
	off = append(off, r.rtoOff...)
	for _, o := range off {
		log.Warn(o.String())
	}
	if inUse == relay.ModeSockmap.String() {
		r.pipeline.Relay = &relay.Kernel{Log: log, Maps: r.k.Relay, Budget: o.RelayBudget, OffloadAfter: o.OffloadAfter, Splice: r.pipeline.Splice}
	}
	r.relay, r.off = inUse, off
	return nil
}

// chooseRelay settles the relay a daemon uses: the kernel relay (asked
// "sockmap") only where enable, the kernel's probe and the verdict's
// attachment, succeeds; splice where it says the kernel cannot
// (*loader.Unsupported), with what is off and why for the log and status.
func chooseRelay(asked relay.Mode, enable func() error) (inUse string, off []report.Off, err error) {
	if asked != relay.ModeSockmap {
		return asked.String(), nil, nil
	}
	err = enable()
	var un *loader.Unsupported
	switch {
	case err == nil:
		return "sockmap", nil, nil
	case errors.As(err, &un):
		return "splice", []report.Off{{Feature: un.Feature, Why: un.Why, Instead: "every connection is relayed by splice"}}, nil
	default:
		return "", nil, fmt.Errorf("kernel relay: %w", err)
	}
}

// tcxOff says that the classifier is a clsact filter because the kernel has
// no tcx (nothing is lost: an operator reading bpftool should know why).
func tcxOff(ifaces []loader.Iface) []report.Off {
	for _, i := range ifaces {
		var un *loader.Unsupported
		if i.TCMode == "clsact" && errors.As(loader.ProbeTCX(), &un) {
			return []report.Off{{Feature: un.Feature, Why: un.Why, Instead: "the classifier is attached as a clsact filter"}}
		}
	}
	return nil
}
