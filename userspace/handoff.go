package userspace

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
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
const upgradeEnv = "PEPSAL_UPGRADE_FDS"

// Handed is what a daemon passes to its successor.
type Handed struct {
	Control net.Listener
	V4, V6  *net.TCPListener // V6 may be nil
	Metrics net.Listener     // nil when off
}

// Inherited is what a daemon started by an upgrade took over.
type Inherited struct {
	Handed
	ParentPID int
	ready     *os.File
}

type fileConn interface{ File() (*os.File, error) }

// StartSuccessor starts binary with args and the handed sockets, and waits
// until it says it serves (it has taken the sockets and the attachment) or
// fails. On error the caller still owns everything and goes on serving.
func StartSuccessor(binary string, args []string, h Handed, wait time.Duration) (pid int, err error) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("ready pipe: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	var names []string
	add := func(name string, c fileConn) error {
		f, err := c.File() // a duplicate: ours stays open until we stop accepting
		if err != nil {
			return fmt.Errorf("pass the %s socket: %w", name, err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		names = append(names, fmt.Sprintf("%s:%d", name, 2+len(cmd.ExtraFiles)))
		return nil
	}
	defer func() {
		for _, f := range cmd.ExtraFiles {
			f.Close()
		}
	}()
	for _, s := range []struct {
		name string
		c    fileConn
		ok   bool
	}{
		{"control", asFileConn(h.Control), h.Control != nil},
		{"v4", h.V4, h.V4 != nil},
		{"v6", h.V6, h.V6 != nil},
		{"metrics", asFileConn(h.Metrics), h.Metrics != nil},
	} {
		if !s.ok {
			continue
		}
		if err := add(s.name, s.c); err != nil {
			readyW.Close()
			return 0, err
		}
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, readyW)
	names = append(names, fmt.Sprintf("ready:%d", 2+len(cmd.ExtraFiles)))
	cmd.Env = append(os.Environ(), upgradeEnv+"="+strings.Join(names, ","), "PEPSAL_UPGRADE_PARENT="+strconv.Itoa(os.Getpid()))
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", binary, err)
	}
	readyW.Close()

	// A line "ready" means it serves; EOF without it means it failed.
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(readyR).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case l := <-line:
		if l == "ready" {
			go func() { <-exited }() // reaped; it is on its own now
			return cmd.Process.Pid, nil
		}
		err := <-exited
		return 0, fmt.Errorf("new daemon failed (%v)", err)
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
		return 0, fmt.Errorf("new daemon not serving after %s", wait)
	}
}

func asFileConn(l net.Listener) fileConn {
	if fc, ok := l.(fileConn); ok {
		return fc
	}
	return nil
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
			return nil, fmt.Errorf("inherited %s socket: %w", name, err)
		}
		switch name {
		case "control":
			in.Control = ln
		case "metrics":
			in.Metrics = ln
		case "v4", "v6":
			tl, ok := ln.(*net.TCPListener)
			if !ok {
				ln.Close()
				return nil, fmt.Errorf("inherited %s socket is not a TCP listener", name)
			}
			if name == "v4" {
				in.V4 = tl
			} else {
				in.V6 = tl
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
	for _, l := range []*net.TCPListener{in.V4, in.V6} {
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
