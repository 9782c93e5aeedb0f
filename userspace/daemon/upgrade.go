// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// An upgrade hands the daemon's listening sockets to a new process started
// from the binary now on disk: the sockets themselves, not their addresses,
// so the kernel's accept queues, the SOCKMAP entry that steers SYNs to them
// and the control socket's name never go away, and no SYN is refused, reset
// or forwarded unsplit during the swap. The old process then stops accepting
// and relays its live connections until they end.

// upgradeEnv names the inherited descriptors: "control:3,v4:4,v6:5,ready:6".
// (also "metrics:N" and "peer:N" when the daemon has them.)
const upgradeEnv = "PEPSAL_UPGRADE_FDS"

// Handed is what a daemon passes to its successor.
type Handed struct {
	Control net.Listener
	V4, V6  *net.TCPListener // V6 may be nil
	Metrics net.Listener     // nil when off
	Peer    *net.TCPListener // the gateway's listener for terminals; nil when not a gateway
}

// Inherited is what a daemon started by an upgrade took over.
type Inherited struct {
	Handed
	ParentPID int
	ready     *os.File
}

// StartSuccessor starts binary with args and the handed sockets, and waits
// until it says it serves (it has taken the sockets and the attachment) or
// fails. On error the caller still owns everything and goes on serving.
//
// The sockets go as raw descriptors (duplicates): exec.Cmd's ExtraFiles
// calls File.Fd, which puts a descriptor in blocking mode, and that mode
// belongs to the socket, so this daemon's own accept loops would then block
// in accept(2) and its Close wait for the next connection.
func StartSuccessor(binary string, args []string, h Handed, wait time.Duration) (pid int, err error) {
	if err := trustedBinary(binary); err != nil {
		return 0, fmt.Errorf("refused to start %s: %w", binary, err)
	}
	files, names, err := dupHanded(h)
	defer func() {
		for _, fd := range files[3:] {
			unix.Close(int(fd))
		}
	}()
	if err != nil {
		return 0, err
	}
	var ready [2]int
	if err := unix.Pipe2(ready[:], unix.O_CLOEXEC); err != nil {
		return 0, fmt.Errorf("ready pipe: %w", err)
	}
	readyR := os.NewFile(uintptr(ready[0]), "ready")
	defer readyR.Close()
	files = append(files, uintptr(ready[1])) // closed with the others
	names = append(names, fmt.Sprintf("ready:%d", len(files)-1))

	env := append(os.Environ(), upgradeEnv+"="+strings.Join(names, ","), "PEPSAL_UPGRADE_PARENT="+strconv.Itoa(os.Getpid()))
	pid, err = syscall.ForkExec(binary, append([]string{binary}, args...), &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", binary, err)
	}
	unix.Close(ready[1])
	files = files[:len(files)-1]
	proc, err := os.FindProcess(pid)
	if err != nil {
		return 0, err
	}
	return awaitReady(proc, readyR, wait)
}

// dupHanded duplicates the handed sockets for the successor: files is
// stdio (the same log), then the duplicates, which names says by name
// ("control:3"). On an error files still holds the duplicates made so
// far, for the caller to close.
func dupHanded(h Handed) (files []uintptr, names []string, err error) {
	files = []uintptr{0, 1, 2} // stdio: the same log
	pass := func(name string, c syscall.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return fmt.Errorf("pass the %s socket: %w", name, err)
		}
		var dup int
		var derr error
		if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3) }); err != nil {
			return fmt.Errorf("pass the %s socket: %w", name, err)
		}
		if derr != nil {
			return fmt.Errorf("pass the %s socket: %w", name, derr)
		}
		files = append(files, uintptr(dup))
		names = append(names, fmt.Sprintf("%s:%d", name, len(files)-1))
		return nil
	}
	for _, s := range []struct {
		name string
		l    net.Listener
	}{{"control", h.Control}, {"v4", tcpOrNil(h.V4)}, {"v6", tcpOrNil(h.V6)}, {"metrics", h.Metrics}, {"peer", tcpOrNil(h.Peer)}} {
		if s.l == nil {
			continue
		}
		c, ok := s.l.(syscall.Conn)
		if !ok {
			return files, names, fmt.Errorf("pass the %s socket: not a socket listener", s.name)
		}
		if err := pass(s.name, c); err != nil {
			return files, names, err
		}
	}
	return files, names, nil
}

// awaitReady waits until the successor proc writes "ready" on its end of
// the ready pipe (it serves), closes it without (it failed), or wait
// passes (it is killed).
func awaitReady(proc *os.Process, ready *os.File, wait time.Duration) (pid int, err error) {
	// A line "ready" means it serves; EOF without it means it failed.
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(ready).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case l := <-line:
		if l == "ready" {
			go proc.Wait() // reaped when it ends; it is on its own now
			return proc.Pid, nil
		}
		st, _ := proc.Wait()
		return 0, fmt.Errorf("new daemon failed (%v)", st)
	case <-time.After(wait):
		_ = proc.Kill()
		proc.Wait()
		return 0, fmt.Errorf("new daemon not serving after %s", wait)
	}
}

func tcpOrNil(l *net.TCPListener) net.Listener {
	if l == nil {
		return nil
	}
	return l
}

// InheritedFromEnv returns the sockets handed by the daemon this process
// replaces, or nil when it was started normally.
func InheritedFromEnv() (*Inherited, error) {
	spec := os.Getenv(upgradeEnv)
	if spec == "" {
		return nil, nil
	}
	os.Unsetenv(upgradeEnv) // not for our own successor
	in := &Inherited{}
	in.ParentPID, _ = strconv.Atoi(os.Getenv("PEPSAL_UPGRADE_PARENT"))
	os.Unsetenv("PEPSAL_UPGRADE_PARENT")
	for _, item := range strings.Split(spec, ",") {
		name, fdText, ok := strings.Cut(item, ":")
		fd, err := strconv.Atoi(fdText)
		if !ok || err != nil || fd < 3 {
			return nil, errors.Join(fmt.Errorf("bad %s %q", upgradeEnv, spec), in.Close())
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil, errors.Join(fmt.Errorf("%s %q: descriptor %d is not open", upgradeEnv, spec, fd), in.Close())
		}
		f := os.NewFile(uintptr(fd), name)
		if name == "ready" {
			in.ready = f
			continue
		}
		ln, err := net.FileListener(f) // a duplicate
		f.Close()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("inherited %s socket: %w", name, err), in.Close())
		}
		switch name {
		case "control":
			in.Control = ln
		case "metrics":
			in.Metrics = ln
		case "v4", "v6", "peer":
			tl, ok := ln.(*net.TCPListener)
			if !ok {
				ln.Close()
				return nil, errors.Join(fmt.Errorf("inherited %s socket is not a TCP listener", name), in.Close())
			}
			switch name {
			case "v4":
				in.V4 = tl
			case "v6":
				in.V6 = tl
			default:
				in.Peer = tl
			}
		default:
			ln.Close()
		}
	}
	if in.ready == nil || in.Control == nil || in.V4 == nil {
		return nil, errors.Join(fmt.Errorf("incomplete %s %q", upgradeEnv, spec), in.Close())
	}
	return in, nil
}

// Ready tells the old daemon that this one serves.
func (in *Inherited) Ready() error {
	if in.ready == nil {
		return nil
	}
	_, err := in.ready.WriteString("ready\n")
	in.ready.Close()
	in.ready = nil
	return err
}

// Close releases whatever was inherited (after a failed start).
func (in *Inherited) Close() error {
	var errs []error
	for _, l := range []net.Listener{in.Control, in.Metrics} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	for _, l := range []*net.TCPListener{in.V4, in.V6, in.Peer} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	if in.ready != nil {
		in.ready.Close()
	}
	return errors.Join(errs...)
}

// Notify sends a state line to systemd when it runs the daemon as a
// Type=notify service (NOTIFY_SOCKET set), e.g. "READY=1" or
// "MAINPID=1234\nREADY=1" after an upgrade; otherwise it does nothing.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	return nil
}
