// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pepsal/pepsal/userspace/report"
)

// keyCheckEvery is how often the gateway looks whether its key file
// changed: a key removed from it is refused within this, without a restart
// (SIGHUP is the upgrade's).
const keyCheckEvery = 2 * time.Second

// terminals is the gateway's view of its terminals: the keys in force,
// read again when the key file changes; the pooled connections of each
// key, closed when its key is revoked or changed; and counters by id.
type terminals struct {
	file      string // "": never reloaded
	log       *slog.Logger
	reloading sync.Mutex // one reload at a time

	mu      sync.Mutex
	keys    *Keys
	stamp   fileStamp
	pooled  map[*TerminalKey]map[*watch]struct{}
	byID    map[string]*termStats // the ids of the key file, now or before: bounded by what the operator wrote
	reloads uint64
	failed  uint64 // reloads that failed: the keys before stay in force
	lastErr string
}

// termStats are one terminal's counters.
type termStats struct {
	revoked       bool
	served        uint64
	revokedClosed uint64
	refused       map[string]uint64
}

func newTerminals(keys *Keys, file string, stamp fileStamp, log *slog.Logger) *terminals {
	t := &terminals{file: file, log: log, keys: keys, stamp: stamp, pooled: map[*TerminalKey]map[*watch]struct{}{}, byID: map[string]*termStats{}}
	for _, id := range keys.IDs() {
		t.byID[id] = &termStats{refused: map[string]uint64{}}
	}
	return t
}

// lookup is the key of id now: unknown_id for an id the key file never
// held, revoked for one it no longer holds.
func (t *terminals) lookup(id string) (*TerminalKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tk := t.keys.Lookup(id); tk != nil {
		return tk, nil
	}
	if _, known := t.byID[id]; known {
		return nil, &authError{report.AuthRevoked, fmt.Sprintf("key id %q was removed from the key file", id)}
	}
	if !t.keys.Ring {
		return nil, &authError{report.AuthUnknownID, fmt.Sprintf("key id %q: this gateway holds one key, of no id", id)}
	}
	return nil, &authError{report.AuthUnknownID, fmt.Sprintf("key id %q is not in the key file", id)}
}

// pool records w as a pooled connection of tk, unless tk was revoked
// meanwhile (false: the connection must go).
func (t *terminals) pool(tk *TerminalKey, w *watch) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.keys.Lookup(tk.ID) != tk {
		return false
	}
	if t.pooled[tk] == nil {
		t.pooled[tk] = map[*watch]struct{}{}
	}
	t.pooled[tk][w] = struct{}{}
	return true
}

// unpool forgets w once its header came or it closed.
func (t *terminals) unpool(tk *TerminalKey, w *watch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pooled[tk], w)
	if len(t.pooled[tk]) == 0 {
		delete(t.pooled, tk)
	}
}

// count books a refusal, a served flow (reason "") or a pooled connection
// closed at its revocation (report.AuthRevoked) under id, if the key file
// holds or held it.
func (t *terminals) count(id, reason string, revokedClosed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byID[id]
	switch {
	case s == nil:
	case revokedClosed:
		s.revokedClosed++
	case reason == "":
		s.served++
	default:
		s.refused[reason]++
	}
}

// watchKeys reloads the key file whenever it changes, until ctx is done.
func (t *terminals) watchKeys(ctx context.Context) {
	if t.file == "" {
		return
	}
	tick := time.NewTicker(keyCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.reload()
		}
	}
}

// reload reads the key file again if its stamp changed. A file that no
// longer loads leaves the keys in force as they were, said in the log and
// in status; one that loads replaces them: the pooled connections of the
// keys it removed or changed are closed (flows already relayed run on).
func (t *terminals) reload() {
	t.reloading.Lock()
	defer t.reloading.Unlock()
	seen, _ := statKey(t.file) // zero when the file is gone: gone is a version too
	t.mu.Lock()
	same := seen == t.stamp
	t.mu.Unlock()
	if same {
		return
	}
	keys, stamp, err := loadKeys(t.file)
	if err != nil {
		t.mu.Lock()
		t.failed++
		t.stamp = seen // a broken (or removed) file is tried again once it changes
		t.lastErr = err.Error()
		t.mu.Unlock()
		t.log.Error("peer key file changed but does not load: the keys before stay in force", "err", err)
		return
	}
	revoked, changed := t.swap(keys, stamp)
	t.log.Info("peer key file reloaded", "keys", len(keys.IDs()), "revoked", revoked, "changed", changed)
}

// swap puts keys in force and closes the pooled connections of the keys
// it removed or changed; it returns the ids removed and changed.
func (t *terminals) swap(keys *Keys, stamp fileStamp) (revoked, changed []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.keys
	for _, id := range old.IDs() {
		okey, nkey := old.Lookup(id), keys.Lookup(id)
		switch {
		case nkey == nil:
			revoked = append(revoked, id)
		case !okey.same(nkey):
			changed = append(changed, id)
		default:
			keys.byID[id] = okey // unchanged: its pooled connections stay
			continue
		}
		for w := range t.pooled[okey] {
			w.revoke()
		}
	}
	for _, id := range keys.IDs() {
		if t.byID[id] == nil {
			t.byID[id] = &termStats{refused: map[string]uint64{}}
		}
		t.byID[id].revoked = false
	}
	for _, id := range revoked {
		t.byID[id].revoked = true
	}
	t.keys, t.stamp = keys, stamp
	t.reloads++
	t.lastErr = ""
	return revoked, changed
}

// stats fills the key file's part of the gateway's report: per terminal of
// a key ring (ids of the file now, and those revoked since the start).
func (t *terminals) stats(s *report.PeerGatewayStats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s.KeyReloads, s.KeyReloadFailures, s.KeyError = t.reloads, t.failed, t.lastErr
	if !t.keys.Ring && len(t.byID) <= 1 {
		return
	}
	pooled := map[string]int{}
	for tk, ws := range t.pooled {
		pooled[tk.ID] += len(ws)
	}
	for id, st := range t.byID {
		ts := report.PeerTerminalStats{ID: id, Revoked: st.revoked, Pooled: pooled[id], Served: st.served,
			RevokedClosed: st.revokedClosed, Refused: map[string]uint64{}}
		for r, n := range st.refused {
			ts.Refused[r] = n
		}
		if tk := t.keys.Lookup(id); tk != nil {
			for _, p := range tk.Clients {
				ts.Clients = append(ts.Clients, p.String())
			}
		}
		s.Terminals = append(s.Terminals, ts)
	}
	slices.SortFunc(s.Terminals, func(a, b report.PeerTerminalStats) int { return cmp.Compare(a.ID, b.ID) })
}
