// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Unsupported says that the kernel cannot give an optional feature, and why:
// pepsal turns off what needs it and says so.
type Unsupported struct {
	Feature string // what is off, e.g. "kernel relay"
	Why     string // what the kernel lacks or does wrong
}

func (e *Unsupported) Error() string { return e.Feature + " off: " + e.Why }

// relayProbeTimeout bounds each step of the probe: on a kernel that works
// each takes microseconds.
const relayProbeTimeout = 2 * time.Second

// ProbeKernelRelay tells whether this kernel can run the kernel relay
// safely, by doing what the relay does: the verdict is loaded (on scratch
// maps: nothing pinned), two loopback connections go into its SOCKHASH as a
// split connection's two legs, bytes cross both ways through the kernel,
// and a FIN must reach the socket's reader as EOF. Kernels before 6.2 lack
// the verdict's kfunc (bpf_cast_to_kern_ctx); before 6.4 (commit
// "bpf, sockmap: Handle fin correctly") a socket in a SOCKHASH reports its
// peer's FIN as "try again" forever; and the kernel must have the 2025
// sockmap fixes (hasRelayFixes), which no probe can check. Failures are
// *Unsupported.
func ProbeKernelRelay() error {
	off := func(format string, a ...any) error {
		return &Unsupported{Feature: "kernel relay", Why: fmt.Sprintf(format, a...)}
	}
	spec, err := loadRelay()
	if err != nil {
		return err
	}
	spec = spec.Copy()
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	sizeConnMaps(spec, 1)
	coll, err := ebpf.NewCollection(spec)
	var ve *ebpf.VerifierError
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return off("the kernel cannot load the relay verdict (%s; the kfunc bpf_cast_to_kern_ctx needs Linux 6.2)", oneLine(err))
	case errors.As(err, &ve):
		return off("the kernel's verifier refuses the relay verdict: %s", oneLine(verifierDetail(err)))
	case err != nil: // not the kernel's limits: missing privileges, no memory
		return fmt.Errorf("load the relay verdict: %w", err)
	}
	defer coll.Close()
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  coll.Maps["pepsal_relay"].FD(),
		Program: coll.Programs[pinRelay],
		Attach:  ebpf.AttachSkSKBVerdict,
	})
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
		return off("attach the relay verdict to a SOCKHASH: %s", oneLine(err))
	} else if err != nil {
		return fmt.Errorf("attach the relay verdict to a scratch SOCKHASH: %w", err)
	}
	v, err := RunningKernel()
	if err != nil {
		return off("%s", oneLine(err))
	}
	if !hasRelayFixes(v) {
		return off("Linux %s lacks the 2025 sockmap fixes against lost and duplicated bytes under backpressure (in 6.16, 6.15.4, 6.12.35, 6.6.95, 6.1.142)", v)
	}
	relay := &Relay{socks: coll.Maps["pepsal_relay"], dirs: coll.Maps["pepsal_relaydir"], user: coll.Maps["pepsal_relayusr"]}
	var bad misbehaves
	if err := probeRelayPath(relay); errors.As(err, &bad) {
		return off("%s", oneLine(err))
	} else if err != nil {
		return fmt.Errorf("kernel relay probe: %w", err)
	}
	return nil
}

// misbehaves is a probe's finding: the kernel did not do what the relay
// needs (other errors are the probe's own: no loopback, no fds).
type misbehaves struct{ error }

// probeRelayPath runs one split connection through relay on loopback:
// client <-> proxyClient (accepted) ... proxyServer (dialed) <-> server.
func probeRelayPath(relay *Relay) error {
	lb, err := listenProbe()
	if err != nil {
		return err
	}
	defer lb.Close()
	client, proxyClient, err := lb.pair()
	if err != nil {
		return err
	}
	defer client.Close()
	defer proxyClient.Close()
	proxyServer, server, err := lb.pair()
	if err != nil {
		return err
	}
	defer proxyServer.Close()
	defer server.Close()

	cookies, err := socketCookies(proxyClient, proxyServer)
	if err != nil {
		return err
	}
	err = relay.Prepare(RelaySide{Cookie: cookies[0]}, RelaySide{Cookie: cookies[1], SeqBase: 1}, 1<<20)
	if err != nil {
		return err
	}
	defer relay.Forget(cookies...)
	if err := insertLegs(relay, cookies, proxyClient, proxyServer); err != nil {
		return err
	}
	if err := probeThrough(client, server, "pepsal probe: to the server"); err != nil {
		return err
	}
	if err := probeThrough(server, client, "pepsal probe: to the client"); err != nil {
		return err
	}
	return probeFIN(client, proxyClient)
}

// probeLoopback is the probe's listener on loopback, where both legs'
// connections are made.
type probeLoopback struct{ net.Listener }

func listenProbe() (probeLoopback, error) {
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false) // an MPTCP socket cannot enter a SOCKHASH
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		return probeLoopback{}, fmt.Errorf("probe listener on loopback: %w", err)
	}
	return probeLoopback{ln}, nil
}

// pair makes one loopback connection, both of its ends.
func (lb probeLoopback) pair() (dialed, accepted *net.TCPConn, err error) {
	d := net.Dialer{Timeout: relayProbeTimeout}
	d.SetMultipathTCP(false)
	c, err := d.Dial("tcp4", lb.Addr().String())
	if err != nil {
		return nil, nil, fmt.Errorf("probe connection on loopback: %w", err)
	}
	_ = lb.Listener.(*net.TCPListener).SetDeadline(time.Now().Add(relayProbeTimeout))
	a, err := lb.Accept()
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("probe accept on loopback: %w", err)
	}
	return c.(*net.TCPConn), a.(*net.TCPConn), nil
}

// socketCookies reads the sockets' cookies, the keys of their relay state.
func socketCookies(conns ...*net.TCPConn) ([]uint64, error) {
	cookies := make([]uint64, len(conns))
	for i, c := range conns {
		if err := sockFD(c, func(fd int) (err error) {
			cookies[i], err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
			return err
		}); err != nil {
			return nil, fmt.Errorf("SO_COOKIE: %w", err)
		}
	}
	return cookies, nil
}

// insertLegs puts the proxy's sockets into the SOCKHASH, as the relay does;
// a kernel that refuses them misbehaves.
func insertLegs(relay *Relay, cookies []uint64, legs ...*net.TCPConn) error {
	for i, c := range legs {
		if err := sockFD(c, func(fd int) error { return relay.Insert(cookies[i], fd) }); err != nil {
			return misbehaves{err}
		}
	}
	return nil
}

// probeThrough writes msg on from and expects it whole on to, carried
// between the legs by the verdict.
func probeThrough(from, to *net.TCPConn, msg string) error {
	if _, err := from.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	_ = to.SetReadDeadline(time.Now().Add(relayProbeTimeout))
	if _, err := io.ReadFull(to, got); err != nil {
		return misbehaves{fmt.Errorf("bytes redirected by the verdict did not arrive (%w)", err)}
	}
	if !bytes.Equal(got, []byte(msg)) {
		return misbehaves{fmt.Errorf("the verdict delivered %q for %q", got, msg)}
	}
	return nil
}

// probeFIN closes the client's side and expects end of file on the proxy's
// socket in the SOCKHASH: the relay learns of a FIN only from its own read.
func probeFIN(client, proxyClient *net.TCPConn) error {
	if err := client.CloseWrite(); err != nil {
		return err
	}
	_ = proxyClient.SetReadDeadline(time.Now().Add(relayProbeTimeout))
	n, err := proxyClient.Read(make([]byte, 1))
	switch {
	case err == io.EOF:
		return nil
	case isTimeout(err):
		return misbehaves{errors.New("a socket in a SOCKHASH does not report its peer's FIN as end of file (fixed in Linux 6.4, \"bpf, sockmap: Handle fin correctly\")")}
	case err != nil:
		return misbehaves{fmt.Errorf("read the FIN on a socket in a SOCKHASH: %w", err)}
	default:
		return misbehaves{fmt.Errorf("read %d bytes where the verdict should have taken them", n)}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sockFD runs fn with c's descriptor (its own, not a dup: a dup would put
// the socket into blocking mode and stop the deadlines the probe relies on).
func sockFD(c *net.TCPConn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	ctlErr := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) })
	return errors.Join(ctlErr, fnErr)
}
