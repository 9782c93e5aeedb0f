// SPDX-License-Identifier: Apache-2.0

package peer

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pepsal/pepsal/userspace/proxy"
)

// A --peer-key file holds either one key (today's single-key file: any
// bytes, at least 32, shared by the gateway and all its terminals, of no
// id) or a key ring: text lines
//
//	# comment
//	ID KEY [clients=PREFIX[,PREFIX...]]
//
// one per terminal, each with its own KEY (at least 32 bytes of text, used
// as they are: `openssl rand -base64 33`), named by ID (what the terminal
// sends in its auth, see CheckID). clients= lists the client addresses the
// terminal may name in its headers (what a --transparent gateway dials
// from); without it, any. A file is a key ring when it is text and a line
// has two fields or more; then every line must be one of the above. A
// terminal's file is a key ring of one line: its own id and key.

// TerminalKey is one terminal's key.
type TerminalKey struct {
	ID      string
	Key     []byte
	Clients []netip.Prefix // empty: any client address
}

// AllowsClient says whether the terminal may name client address a in a
// header (IPv4-mapped prefixes and addresses taken as IPv4).
func (k *TerminalKey) AllowsClient(a netip.Addr) bool {
	if len(k.Clients) == 0 {
		return true
	}
	for _, p := range k.Clients {
		if proxy.UnmapPrefix(p).Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// same says whether k and o grant the same: a reload keeps the pooled
// connections of a terminal whose line did not change.
func (k *TerminalKey) same(o *TerminalKey) bool {
	return k.ID == o.ID && bytes.Equal(k.Key, o.Key) && slices.Equal(k.Clients, o.Clients)
}

// Keys is what a --peer-key file holds.
type Keys struct {
	Ring  bool // a key ring; false: a single key, of id ""
	byID  map[string]*TerminalKey
	ids   []string  // in file order
	stamp fileStamp // of the file it was read from (LoadKeys)
}

// SingleKey is the Keys of a single-key file holding key.
func SingleKey(key []byte) *Keys {
	return &Keys{byID: map[string]*TerminalKey{"": {Key: key}}, ids: []string{""}}
}

// Lookup is the key of id, or nil.
func (k *Keys) Lookup(id string) *TerminalKey { return k.byID[id] }

// IDs are the ids held, in file order ("" for a single key).
func (k *Keys) IDs() []string { return slices.Clone(k.ids) }

// Own is a terminal's key: the single key, or the one line of a key ring.
func (k *Keys) Own() (*TerminalKey, error) {
	if len(k.ids) != 1 {
		return nil, fmt.Errorf("holds %d keys: a terminal's key file holds its own, one `ID KEY` line", len(k.ids))
	}
	return k.byID[k.ids[0]], nil
}

// ParseKeys reads the content of a --peer-key file (see above). Its errors
// are one line, naming the line of the file at fault.
func ParseKeys(data []byte) (*Keys, error) {
	if !isRing(data) {
		if len(data) < minKeyLen {
			return nil, fmt.Errorf("holds %d bytes, want at least %d random bytes (head -c 32 /dev/urandom > FILE)", len(data), minKeyLen)
		}
		return SingleKey(bytes.Clone(data)), nil
	}
	k := &Keys{Ring: true, byID: map[string]*TerminalKey{}}
	seen := map[string]int{}
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		tk, err := parseKeyLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if first, dup := seen[tk.ID]; dup {
			return nil, fmt.Errorf("line %d: id %s is on line %d already", n, tk.ID, first)
		}
		seen[tk.ID] = n
		k.byID[tk.ID] = tk
		k.ids = append(k.ids, tk.ID)
	}
	return k, nil
}

// isRing tells a key ring from a single key: text (printable ASCII and
// white space only) with a line of two fields or more. A random binary key
// is not text; a text key of one word is one field.
func isRing(data []byte) bool {
	for _, c := range data {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			return true
		}
	}
	return false
}

// parseKeyLine reads `ID KEY [clients=PREFIX,...]`.
func parseKeyLine(line string) (*TerminalKey, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return nil, fmt.Errorf("want `ID KEY [clients=PREFIX,...]`, found %d field", len(f))
	}
	tk := &TerminalKey{ID: f[0], Key: []byte(f[1])}
	if tk.ID == "" || CheckID(tk.ID) != nil {
		return nil, fmt.Errorf("bad id %q: 1 to %d of A-Z a-z 0-9 . _ -", f[0], MaxIDLen)
	}
	if len(tk.Key) < minKeyLen {
		return nil, fmt.Errorf("the key of %s is %d bytes, want at least %d (openssl rand -base64 33)", tk.ID, len(tk.Key), minKeyLen)
	}
	for _, opt := range f[2:] {
		list, ok := strings.CutPrefix(opt, "clients=")
		if !ok {
			return nil, fmt.Errorf("%s: unknown field %q: want clients=PREFIX,...", tk.ID, opt)
		}
		for _, s := range strings.Split(list, ",") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s: bad clients= prefix %q: want e.g. 10.1.0.0/16", tk.ID, s)
			}
			tk.Clients = append(tk.Clients, p.Masked())
		}
	}
	return tk, nil
}

// LoadKeys reads a --peer-key file (checked as readKeyFile checks it): a
// single key or a key ring. Errors are a *KeyError (or ErrNoKey).
func LoadKeys(path string) (*Keys, error) {
	k, _, err := loadKeys(path)
	return k, err
}

func loadKeys(path string) (*Keys, fileStamp, error) {
	data, stamp, err := readKeyFile(path)
	if err != nil {
		return nil, stamp, err
	}
	k, err := ParseKeys(data)
	if err != nil {
		return nil, stamp, keyErr(err, " %s: %v", path, err)
	}
	k.stamp = stamp
	return k, stamp, nil
}
