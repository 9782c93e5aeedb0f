// SPDX-License-Identifier: Apache-2.0

package nettest

import (
	"bytes"
	"io"
	"net"
	"time"
)

// MemFlood is how much an Endless MemConn gives in all.
const MemFlood = 64 << 20

// MemConn is a connection in memory whose other end is a script, for the
// fuzz targets of what reads a peer (the control socket's two sides):
// Read gives In, then Fill bytes if Endless (a client that never stops:
// up to MemFlood bytes in all, so that a reader without a bound fails
// instead of hanging), then io.EOF; Write keeps what was written in Out.
// Consumed is how many bytes were read. Deadlines are accepted and never
// expire.
type MemConn struct {
	In       []byte
	Endless  bool
	Fill     byte
	Out      bytes.Buffer
	Consumed int64
	Closed   bool
}

func (c *MemConn) Read(p []byte) (int, error) {
	switch {
	case c.Closed:
		return 0, net.ErrClosed
	case len(c.In) > 0:
		n := copy(p, c.In)
		c.In = c.In[n:]
		c.Consumed += int64(n)
		return n, nil
	case !c.Endless || c.Consumed >= MemFlood:
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), MemFlood-c.Consumed)]
	for i := range p {
		p[i] = c.Fill
	}
	c.Consumed += int64(len(p))
	return len(p), nil
}

func (c *MemConn) Write(p []byte) (int, error) {
	if c.Closed {
		return 0, net.ErrClosed
	}
	return c.Out.Write(p)
}

func (c *MemConn) Close() error                     { c.Closed = true; return nil }
func (c *MemConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (c *MemConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (c *MemConn) SetDeadline(time.Time) error      { return nil }
func (c *MemConn) SetReadDeadline(time.Time) error  { return nil }
func (c *MemConn) SetWriteDeadline(time.Time) error { return nil }
