// SPDX-License-Identifier: Apache-2.0

package forwardfilter

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Inspect lists the netfilter of this process's network namespace, read
// only (nftables base chains, the FORWARD chains of legacy filter tables),
// and classifies it. Reading the ruleset needs CAP_NET_ADMIN.
func Inspect() (Finding, error) {
	chains, err := listChains()
	if err != nil {
		return Finding{}, err
	}
	legacy, err := legacyFilterTables("/proc/net")
	if err != nil {
		return Finding{}, err
	}
	// A legacy table is read for its FORWARD chain; one that cannot be
	// read counts as filtering.
	var unread []string
	for _, tool := range legacy {
		family := unix.AF_INET
		if tool == "ip6tables" {
			family = unix.AF_INET6
		}
		c, err := legacyForward(family)
		if err != nil {
			unread = append(unread, tool)
			continue
		}
		chains = append(chains, c)
	}
	return Classify(chains, unread), nil
}

// listChains lists the nftables base chains (over netlink: no parsing of
// `nft` output, no nft binary needed), with the rule count of the forward
// ones. A kernel without nf_tables has none.
func listChains() ([]Chain, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	all, err := conn.ListChains()
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil // no nfnetlink or no nf_tables: nothing can filter through them
	}
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var out []Chain
	for _, ch := range all {
		if ch.Hooknum == nil || ch.Table == nil {
			continue // a regular chain: reached only by a jump from a base chain
		}
		c := Chain{
			Family: familyName(ch.Table.Family),
			Table:  ch.Table.Name,
			Name:   ch.Name,
			Hook:   hookName(*ch.Hooknum),
			Type:   string(ch.Type),
			Drop:   ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop,
		}
		if c.Hook == hookForward {
			// A rule this library cannot decode still counts: unread is
			// not harmless.
			c.Rules = -1
			if rules, err := conn.GetRules(ch.Table, ch); err == nil {
				c.Rules = len(rules)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

// hookName names an IP family's hook (netdev and bridge numbers overlap,
// and their chains are never classified as forwarding ones).
func hookName(h nftables.ChainHook) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return hookForward
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}

// legacyFilterTables names the legacy x_tables whose filter table exists in
// this namespace (iptables-legacy, ip6tables-legacy): dir/ip_tables_names
// lists the tables instantiated here (and only those may be asked for
// their rules: see legacyForward).
func legacyFilterTables(dir string) ([]string, error) {
	var out []string
	for _, t := range []struct{ file, tool string }{{"ip_tables_names", "iptables"}, {"ip6_tables_names", "ip6tables"}} {
		has, err := listsFilter(filepath.Join(dir, t.file))
		if err != nil {
			return nil, err
		}
		if has {
			out = append(out, t.tool)
		}
	}
	return out, nil
}

// listsFilter says whether the tables file names "filter"; no file (no
// x_tables module loaded) is no table.
func listsFilter(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == "filter" {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return false, nil
}
