// Package userspace is pepsal's daemon (lifecycle, control socket, metrics,
// upgrades). The connection pipeline is in proxy, the warm paths between two
// pepsals in peer, the relays in relay, the per-connection record in conn,
// leg tuning in tuning, socket helpers in sockopt and the status schema in
// report.
package userspace
