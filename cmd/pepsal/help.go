// SPDX-License-Identifier: Apache-2.0

package main

import "github.com/spf13/cobra"

// addHelp gives root's commands their descriptions and examples: `pepsal
// CMD --help` and the DESCRIPTION and EXAMPLE sections of their man pages
// (pepsal-CMD(8), written by make package).
func addHelp(root *cobra.Command) {
	texts := map[string]struct{ long, example string }{
		"run":    {runLong, runExample},
		"attach": {attachLong, attachExample},
		"detach": {detachLong, detachExample},
		"status": {statusLong, statusExample},
		"conns":  {connsLong, connsExample},
	}
	for _, c := range root.Commands() {
		if t, ok := texts[c.Name()]; ok {
			c.Long, c.Example = t.long, t.example
		}
	}
}

// rootLong is the description of pepsal, in `pepsal --help` and pepsal(8).
const rootLong = `pepsal splits the TCP connections a Linux router forwards. An eBPF
classifier on the interfaces given with --iface steers each new
connection to a local proxy, which answers the client at once and opens
its own connection to the server: each leg then runs its own congestion
control, and the long leg of a satellite link can be tuned for it
(--role). What pepsal does not split is forwarded untouched, and when
the daemon is not serving, new connections pass unsplit (fail-open).

pepsal run is the daemon; as a systemd service (pepsal.service) it takes
its flags from /etc/default/pepsal, and systemctl reload pepsal upgrades
it in place without dropping a connection. pepsal status and pepsal
conns show what it does, pepsal detach removes every trace of pepsal
from the network namespace.

README.md (/usr/share/doc/pepsal when installed from the package) says
how to deploy it, what each counter means and what pepsal trusts.`

const runLong = `Attach pepsal to the interfaces given with --iface (or serve on the
attachment pepsal attach made) and split the TCP connections forwarded
from them until stopped: each is accepted on pepsal's listener on
loopback, dialed to its destination and relayed, each leg with its own
TCP settings (--role presets them for a satellite link).

SIGTERM or SIGINT drains the live connections for --drain-timeout, resets
what is left and detaches what this daemon attached. SIGHUP upgrades in
place: the binary now on disk takes the listening sockets over, and this
process relays its connections to their end (at most --upgrade-drain).

As a systemd service (pepsal.service) it takes its flags from PEPSAL_ARGS
in /etc/default/pepsal. It needs root, or CAP_NET_ADMIN, CAP_BPF and
CAP_PERFMON (and CAP_NET_RAW with warm paths, for their outage watch).`

const runExample = `  # Split what LAN clients on eth0 open; Ctrl-C (SIGTERM) drains and detaches
  pepsal run --iface eth0

  # A satellite gateway: clients are across the link on sat0; metrics on loopback
  pepsal run --iface sat0 --role gateway --metrics-addr 127.0.0.1:9595

  # Only web ports, never the operator's own networks
  pepsal run --iface eth0 --ports 80,443 --exclude 192.0.2.0/24 --deny 10.0.0.0/8

  # Serve on an attachment made by pepsal attach
  pepsal run`

const attachLong = `Attach pepsal's classifier, steering and policy routing to the
interfaces given with --iface, pin them in /sys/fs/bpf and exit: the
attachment outlives the command, and pepsal run without --iface serves
on it. Attaching again updates the ports and exclusions and adds
interfaces. Until a daemon serves, connections are forwarded unsplit.`

const attachExample = `  # Attach to eth0 for web ports, then serve on it; the attachment outlives the daemon
  pepsal attach --iface eth0 --ports 80,443
  pepsal run

  # Attaching again updates ports and exclusions and adds interfaces
  pepsal attach --iface eth0 --iface eth1 --exclude 192.0.2.0/24`

const detachLong = `Remove what pepsal made in this network namespace: the tc programs
(and a clsact qdisc it created), the sk_lookup link, the fwmark rules,
the routes of its table, the sock_ops program and the pins; restore the
sysctls it changed. It also cleans up after a daemon killed with SIGKILL.
Nothing else on the router is changed.`

const detachExample = `  # After pepsal attach, or a daemon killed with SIGKILL
  pepsal detach

  # In another network namespace
  ip netns exec red pepsal detach`

const statusLong = `Show what is attached in this network namespace (interfaces, programs,
listener), the daemon that serves it (pid, version, connections, limits),
the counters of the classifier's and the daemon's decisions, and anything
incoherent.

Exit status: 0 when attached and serving; 3 when not attached, not
serving or incoherent; another value on an error.`

const statusExample = `  pepsal status

  # For a script or a health check: exit 3 when not attached and serving
  pepsal status --json > /dev/null || echo "pepsal is not splitting"`

const connsLong = `List the connections the daemon of this network namespace splits now:
client and server, relay (splice, or kernel with the share of the bytes
it moved), state, bytes each way, age, and each leg's congestion control,
window, round-trip time and retransmissions. Root may ask, and members
of the daemon's --control-group.`

const connsExample = `  pepsal conns

  # The connections to port 443 (JSON, with jq)
  pepsal conns --json | jq '.[] | select(.server | endswith(":443"))'`
