// Package userspace is pepsal's daemon (lifecycle, control socket, metrics,
// upgrades) and its warm paths between two pepsals. The connection pipeline
// is in proxy, the relays in relay, the per-connection record in conn, leg
// tuning in tuning, socket helpers in sockopt and the status schema in
// report.
package userspace
