// SPDX-License-Identifier: Apache-2.0

package relay

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/pepsal/pepsal/loader"
)

// fakeRelay is Maps without BPF: no socket is really in a SOCKHASH, so
// every byte reaches userspace, as if the verdict had passed it. Its
// counters model that verdict: a direction's passed_bytes follow what
// userspace published (SetUser), less holdBack (bytes the verdict has not
// seen yet); kernel_bytes are what the test says the verdict redirected.
type fakeRelay struct {
	mu       sync.Mutex
	calls    []string // "prepare C S", "insert C", "forget C S"
	dirs     map[uint64]*fakeDir
	socks    map[uint64]int
	reads    map[uint64]int // Dir calls per cookie
	forgot   chan struct{}  // closed at the first Forget
	failPrep error
	failIns  map[uint64]error
	after    []string // calls after Forget
}

type fakeDir struct {
	dir      loader.RelayDir
	user     uint64
	holdBack uint64
}

func newFakeRelay() *fakeRelay {
	return &fakeRelay{dirs: map[uint64]*fakeDir{}, socks: map[uint64]int{}, reads: map[uint64]int{},
		forgot: make(chan struct{}), failIns: map[uint64]error{}}
}

func (f *fakeRelay) log(s string) {
	select {
	case <-f.forgot:
		f.after = append(f.after, s)
	default:
	}
	f.calls = append(f.calls, s)
}

func (f *fakeRelay) Prepare(a, b loader.RelaySide, budget uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(fmt.Sprintf("prepare %d %d", a.Cookie, b.Cookie))
	if f.failPrep != nil {
		return f.failPrep
	}
	for _, d := range []struct{ src, dst loader.RelaySide }{{a, b}, {b, a}} {
		if _, ok := f.dirs[d.src.Cookie]; ok {
			return errors.New("exists")
		}
		f.dirs[d.src.Cookie] = &fakeDir{dir: loader.RelayDir{PeerCookie: d.dst.Cookie, PeerBase: d.dst.SeqBase, Budget: budget, PassedBytes: d.src.Pre}, user: d.src.Pre}
	}
	return nil
}

func (f *fakeRelay) Insert(cookie uint64, fd int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(fmt.Sprintf("insert %d", cookie))
	if _, ok := f.dirs[cookie]; !ok {
		return errors.New("inserted before its state was prepared")
	}
	if err := f.failIns[cookie]; err != nil {
		return err
	}
	f.socks[cookie] = fd
	return nil
}

func (f *fakeRelay) Dir(cookie uint64) (loader.RelayDir, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads[cookie]++
	d, ok := f.dirs[cookie]
	if !ok {
		f.log(fmt.Sprintf("dir %d (unknown)", cookie))
		return loader.RelayDir{}, errors.New("key does not exist")
	}
	out := d.dir
	out.PassedBytes = max(d.user, d.dir.PassedBytes)
	out.PassedBytes -= min(out.PassedBytes, d.holdBack)
	return out, nil
}

func (f *fakeRelay) SetUser(cookie uint64, n uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.dirs[cookie]
	if !ok {
		f.log(fmt.Sprintf("setuser %d (unknown)", cookie))
		return errors.New("key does not exist")
	}
	d.user = n
	return nil
}

func (f *fakeRelay) Forget(cookies ...uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(fmt.Sprintf("forget %v", cookies))
	for _, c := range cookies {
		delete(f.dirs, c)
		delete(f.socks, c)
	}
	select {
	case <-f.forgot:
	default:
		close(f.forgot)
	}
}

// set changes a direction's counters, as the verdict would.
func (f *fakeRelay) set(cookie uint64, fn func(d *fakeDir)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.dirs[cookie])
}

func (f *fakeRelay) dirReads(cookie uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads[cookie]
}

func (f *fakeRelay) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}
