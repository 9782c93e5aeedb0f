// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
	"github.com/pepsal/pepsal/tests/testbed"
)

// shortHeader is what a short-exchange client sends first: its id, how many
// payload bytes follow and how many the server must answer.
const shortHeader = 12

// exchangeSizes are payload and reply sizes: mostly tiny (a last byte sent
// with, or right before, the FIN is what a relay can lose), some up to 100 KB.
var exchangeSizes = []int{0, 1, 1, 1, 2, 7, 13, 100, 1000, 1448, 4096, 16 << 10, 65 << 10, 100_000}

// tinyTails are the payloads sent after the header in a write of their own.
var tinyTails = []int{1, 1, 2, 7, 100}

// exchange is one short request/response: the client writes its header and
// payload (in one write or two) and half-closes at once; the server reads to
// EOF, answers in one write and closes at once. Both FINs leave right behind
// the data.
type exchange struct {
	id        uint32
	up, down  int
	twoWrites bool
	noDelay   bool
}

func (e exchange) String() string {
	return fmt.Sprintf("#%d up=%d down=%d two_writes=%v nodelay=%v", e.id, e.up, e.down, e.twoWrites, e.noDelay)
}

// fill is the byte at offset i of a stream: distinct per exchange and offset,
// so a lost, duplicated or reordered byte shows.
func fill(id uint32, b []byte, off int) {
	for i := range b {
		b[i] = byte(uint32(off+i)*31 + id*7 + uint32(off+i)>>8)
	}
}

func checkStream(id uint32, b []byte) int {
	want := make([]byte, len(b))
	fill(id, want, 0)
	for i := range b {
		if b[i] != want[i] {
			return i
		}
	}
	return -1
}

// shortExchangeServer answers exchanges and reports, per id, what it got.
func shortExchangeServer(t *testing.T, ns *testbed.NS, addr string, got chan<- string) {
	serve(t, ns, addr, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		var hdr [shortHeader]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			got <- fmt.Sprintf("server: header: %v", err)
			return
		}
		id := binary.BigEndian.Uint32(hdr[0:])
		up := int(binary.BigEndian.Uint32(hdr[4:]))
		down := int(binary.BigEndian.Uint32(hdr[8:]))
		body, err := io.ReadAll(c)
		switch {
		case err != nil:
			got <- fmt.Sprintf("server #%d: read: %v after %d of %d bytes", id, err, len(body), up)
			return
		case len(body) != up:
			got <- fmt.Sprintf("server #%d: got %d of %d bytes, then a clean EOF", id, len(body), up)
			return
		case checkStream(id, body) >= 0:
			got <- fmt.Sprintf("server #%d: byte %d differs", id, checkStream(id, body))
			return
		}
		reply := make([]byte, down)
		fill(id^0xffff, reply, 0)
		if _, err := c.Write(reply); err != nil {
			got <- fmt.Sprintf("server #%d: write reply: %v", id, err)
			return
		}
		got <- ""
	})
}

// runExchange is the client side; it returns what went wrong, or "", and
// whether it connected.
func runExchange(ns *testbed.NS, addr string, e exchange) (string, bool) {
	c, err := dial(ns, addr, 10*time.Second)
	if err != nil {
		return fmt.Sprintf("%v: dial: %v", e, err), false
	}
	if msg := clientExchange(c, e); msg != "" {
		return fmt.Sprintf("%s (from %s)", msg, c.LocalAddr()), true
	}
	return "", true
}

func clientExchange(c *net.TCPConn, e exchange) string {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	_ = c.SetNoDelay(e.noDelay)
	msg := make([]byte, shortHeader+e.up)
	binary.BigEndian.PutUint32(msg[0:], e.id)
	binary.BigEndian.PutUint32(msg[4:], uint32(e.up))
	binary.BigEndian.PutUint32(msg[8:], uint32(e.down))
	fill(e.id, msg[shortHeader:], 0)
	writes := [][]byte{msg}
	if e.twoWrites {
		writes = [][]byte{msg[:shortHeader], msg[shortHeader:]}
	}
	for _, w := range writes {
		if _, err := c.Write(w); err != nil {
			return fmt.Sprintf("%v: write: %v", e, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Sprintf("%v: shutdown: %v", e, err)
	}
	reply, err := io.ReadAll(c)
	switch {
	case err != nil:
		return fmt.Sprintf("%v: client read: %v after %d of %d bytes", e, err, len(reply), e.down)
	case len(reply) != e.down:
		return fmt.Sprintf("%v: client got %d of %d bytes, then a clean EOF", e, len(reply), e.down)
	case checkStream(e.id^0xffff, reply) >= 0:
		return fmt.Sprintf("%v: client: reply byte %d differs", e, checkStream(e.id^0xffff, reply))
	}
	return ""
}

// testShortExchangesIntact: 2,000 short exchanges whose data and FIN leave
// together or back to back, both directions, 20 at a time through a 5 ms
// link: not one byte lost, not one reset. (The kernel relay used to half-close
// the other leg on EOF before the verdict had seen the last bytes.)
func testShortExchangesIntact(t *testing.T, cfg suite) {
	link := linkemu.Link{
		Down: linkemu.Dir{RateBps: 20e6, Delay: 5 * time.Millisecond},
		Up:   linkemu.Dir{RateBps: 20e6, Delay: 5 * time.Millisecond},
	}
	b := newBedWith(t, cfg, testbed.Options{Middle: linkemu.Middle(link)})
	total, parallel := 2000, 20
	if n, err := strconv.Atoi(os.Getenv("PEPSAL_SHORT_EXCHANGES")); err == nil && n > 0 {
		total = n // a soak run: PEPSAL_SHORT_EXCHANGES=10000
	}
	got := make(chan string, total)
	for _, f := range families {
		shortExchangeServer(t, b.Server, hostPort(f.server, 7700), got)
	}
	b.startPepsal()

	rng := rand.New(rand.NewPCG(14, 14))
	work := make(chan exchange)
	go func() {
		defer close(work)
		for i := range total {
			// Three in four: a header, then a tiny tail in its own write,
			// then the FIN (the shape that lost its tail); the rest: any
			// size in one write.
			e := exchange{id: uint32(i), twoWrites: i%4 != 0, noDelay: (i/4)%2 == 0}
			e.up = exchangeSizes[rng.IntN(len(exchangeSizes))]
			if e.twoWrites {
				e.up = tinyTails[rng.IntN(len(tinyTails))]
			}
			e.down = exchangeSizes[rng.IntN(len(exchangeSizes))]
			work <- e
		}
	}()
	var (
		mu         sync.Mutex
		failures   []string
		notDialled int
		wg         sync.WaitGroup
	)
	for w := range parallel {
		f := families[w%len(families)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				msg, dialled := runExchange(b.Client, hostPort(f.server, 7700), e)
				mu.Lock()
				if msg != "" {
					failures = append(failures, f.name+" "+msg)
				}
				if !dialled {
					notDialled++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Every connection that reached the server reports once.
	for range total - notDialled {
		select {
		case msg := <-got:
			if msg != "" {
				failures = append(failures, msg)
			}
		case <-time.After(10 * time.Second):
			failures = append(failures, "server: an exchange never ended")
		}
	}
	if len(failures) > 0 {
		for i, f := range failures {
			if i == 20 {
				t.Errorf("... and %d more", len(failures)-20)
				break
			}
			t.Error(f)
		}
		t.Fatalf("%d failures in %d exchanges", len(failures), total)
	}
	s := b.status()
	if s.Daemon == nil || s.Daemon.Stats.Reset != 0 {
		t.Errorf("daemon stats: %+v", s.Daemon)
	}
}
