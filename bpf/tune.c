// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sock_ops: per-leg initial congestion and receive windows, which no socket
 * option can set, and with --role auto the window and congestion control of
 * each leg by its handshake round trip. Attached to the root cgroup, it sees every TCP socket of
 * the host and touches only pepsal's: accepted sockets of diverted flows
 * (found in pepsal_diverted), upstream sockets the daemon registered, and
 * the gateway's accepted warm connections from terminals (pepsal_peerport).
 * On long legs it also records retransmission timeouts (pepsal_stalled), so
 * that the daemon can make them retransmit when the link returns. */
#include "steering.h"

#include <linux/in.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define SOL_TCP 6
#define TCP_CONGESTION 13
#define TCPHDR_SYN 0x02

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct leg_tuning);
} pepsal_tuning SEC(".maps");

/* Socket cookies of the daemon's upstream sockets, registered before connect. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} pepsal_upstream SEC(".maps");

/* The gateway's listener for terminals' warm connections (index 0: its
 * port, host order; 0: none). Its accepted sockets are not diverted flows,
 * yet they are the long leg: tuned like client legs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} pepsal_peerport SEC(".maps");

/* Client legs whose initial window waits for the end of the handshake (by
 * socket cookie): fast-open children of a source not in --fastopen-from. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} pepsal_iw_wait SEC(".maps");

/* Watched long legs in retransmission back-off (see struct stall); the
 * daemon deletes an entry once it kicked it or the remote proved alive. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 16384);
	__type(key, struct stall_key);
	__type(value, struct stall);
} pepsal_stalled SEC(".maps");

/* leg says which leg of a split connection the socket is, or -1; trusted,
 * whether its SYN came from --fastopen-from. */
static __always_inline int leg(struct bpf_sock_ops *ops, int passive, int *trusted)
{
	struct divert_info *info;
	struct config *cfg;
	struct flow_key key = {};
	__u32 zero = 0, *port;
	__u64 cookie;

	cfg = bpf_map_lookup_elem(&pepsal_config, &zero);
	if (!cfg || bpf_get_netns_cookie(ops) != cfg->netns_cookie)
		return -1;
	if (!passive) {
		cookie = bpf_get_socket_cookie(ops);
		return bpf_map_lookup_elem(&pepsal_upstream, &cookie) ? LEG_SERVER : -1;
	}
	if (ops->family == AF_INET) {
		v4_mapped(key.client_addr, ops->remote_ip4);
		v4_mapped(key.server_addr, ops->local_ip4);
	} else if (ops->family == AF_INET6) {
		__builtin_memcpy(key.client_addr, ops->remote_ip6, 16);
		__builtin_memcpy(key.server_addr, ops->local_ip6, 16);
	} else {
		return -1;
	}
	key.family = ops->family;
	key.client_port = bpf_ntohl(ops->remote_port);
	key.server_port = ops->local_port;
	info = bpf_map_lookup_elem(&pepsal_diverted, &key);
	if (info) {
		*trusted = info->flags & DIVERT_TRUSTED;
		return LEG_CLIENT;
	}
	port = bpf_map_lookup_elem(&pepsal_peerport, &zero);
	if (port && *port && ops->local_port == *port)
		return LEG_CLIENT;
	return -1;
}

static __always_inline void set_iw(struct bpf_sock_ops *ops, int iw)
{
	if (bpf_setsockopt(ops, SOL_TCP, TCP_BPF_IW, &iw, sizeof(iw)))
		COUNT(tune_failed);
	else
		COUNT(tune_init_cwnd);
}

/* defer_iw puts a client leg's initial window off until its handshake
 * completes. PASSIVE_ESTABLISHED runs on the SYN for a fast-open child:
 * with a large window at once, one spoofed SYN carrying a request would
 * have the reply (up to the SYN's window) sent at the spoofed address. */
static __always_inline void defer_iw(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	__u8 one = 1;

	if (bpf_map_update_elem(&pepsal_iw_wait, &cookie, &one, BPF_ANY)) {
		COUNT(tune_failed); /* the kernel's initial window stays */
		return;
	}
	if (bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG)) {
		bpf_map_delete_elem(&pepsal_iw_wait, &cookie);
		COUNT(tune_failed);
		return;
	}
	COUNT(tune_iw_deferred);
}

/* by_rtt tunes a leg of --role auto by its handshake RTT: the initial
 * window is one bandwidth-delay product of the assumed rate (a GEO leg
 * starts where the gateway preset does, a LAN leg where the kernel does),
 * never below the kernel's own; a long leg gets the long legs' congestion
 * control. Window first: the congestion control paces by it at its init. */
static __always_inline void by_rtt(struct bpf_sock_ops *ops, struct leg_tuning *t)
{
	__u64 rtt_us = ops->srtt_us >> 3, mss = ops->mss_cache, iw;
	char cc[sizeof(t->long_cc)];

	if (!rtt_us || !mss) {
		COUNT(tune_auto_no_rtt);
		return;
	}
	iw = rtt_us * t->auto_rate / 1000 / mss;
	if (iw < t->auto_min)
		iw = t->auto_min;
	if (iw > t->auto_max)
		iw = t->auto_max;
	if (iw > ops->snd_cwnd) {
		int w = iw;

		if (bpf_setsockopt(ops, SOL_TCP, TCP_BPF_IW, &w, sizeof(w)))
			COUNT(tune_failed);
		else
			COUNT(tune_auto_iw);
	}
	if (!t->long_cc[0] || rtt_us < t->auto_long_us)
		return;
	__builtin_memcpy(cc, t->long_cc, sizeof(cc));
	cc[sizeof(cc) - 1] = 0;
	if (bpf_setsockopt(ops, SOL_TCP, TCP_CONGESTION, cc, sizeof(cc)))
		COUNT(tune_failed);
	else
		COUNT(tune_auto_long);
}

/* watch asks for a long leg's retransmission timeouts (record_rto). */
static __always_inline void watch(struct bpf_sock_ops *ops, struct leg_tuning *t)
{
	if (!t->watch_us || (t->watch_us > 1 && (ops->srtt_us >> 3) < t->watch_us))
		return;
	if (bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTO_CB_FLAG))
		COUNT(tune_failed);
	else
		COUNT(tune_rto_watched);
}

/* record_rto notes a watched leg's timeout (args[0]: icsk_retransmits).
 * Every pepsal's program sees the flag another set: only its namespace's. */
static __always_inline void record_rto(struct bpf_sock_ops *ops)
{
	struct stall_key key = {};
	struct stall s = {};
	struct config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&pepsal_config, &zero);
	if (!cfg || bpf_get_netns_cookie(ops) != cfg->netns_cookie)
		return;
	if (ops->family == AF_INET) {
		v4_mapped(key.local_addr, ops->local_ip4);
		v4_mapped(key.remote_addr, ops->remote_ip4);
	} else if (ops->family == AF_INET6) {
		__builtin_memcpy(key.local_addr, ops->local_ip6, 16);
		__builtin_memcpy(key.remote_addr, ops->remote_ip6, 16);
	} else {
		return;
	}
	key.family = ops->family;
	key.local_port = ops->local_port;
	key.remote_port = bpf_ntohl(ops->remote_port);
	s.last_ns = bpf_ktime_get_ns();
	s.snd_una = ops->snd_una;
	s.timeouts = ops->args[0];
	if (bpf_map_update_elem(&pepsal_stalled, &key, &s, BPF_ANY))
		COUNT(tune_failed);
	else
		COUNT(tune_rto_recorded);
}

/* iw_after_handshake: the first state change of a deferred leg. Into
 * ESTABLISHED (the client's ACK proved its address, and measured the
 * round trip) the window is set, unless the leg already sent data
 * (TCP_BPF_IW refuses then); any other (the handshake never completed)
 * drops it. */
static __always_inline void iw_after_handshake(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	__u32 which = LEG_CLIENT;
	struct leg_tuning *t;
	int iw;

	if (!bpf_map_lookup_elem(&pepsal_iw_wait, &cookie))
		return; /* another program asked for state callbacks */
	bpf_map_delete_elem(&pepsal_iw_wait, &cookie);
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_STATE_CB_FLAG);
	if (ops->args[1] != BPF_TCP_ESTABLISHED)
		return;
	t = bpf_map_lookup_elem(&pepsal_tuning, &which);
	if (!t)
		return;
	if (t->watch_us > 1) /* by RTT: not known at the SYN */
		watch(ops, t);
	if (!t->init_cwnd) {
		if (t->auto_rate)
			by_rtt(ops, t);
		return;
	}
	iw = t->init_cwnd;
	if (bpf_setsockopt(ops, SOL_TCP, TCP_BPF_IW, &iw, sizeof(iw)))
		COUNT(tune_iw_late);
	else
		COUNT(tune_init_cwnd);
}

SEC("sockops")
int pepsal_tune(struct bpf_sock_ops *ops)
{
	struct leg_tuning *t;
	__u32 which;
	int passive, l, trusted = 0, tfo_child;

	switch (ops->op) {
	case BPF_SOCK_OPS_RWND_INIT:
		/* A request socket (not full) is the passive side's SYN-ACK:
		 * the window it advertises, which sends nothing. */
		passive = !ops->is_fullsock;
		break;
	case BPF_SOCK_OPS_STATE_CB:
		iw_after_handshake(ops);
		return 1;
	case BPF_SOCK_OPS_RTO_CB:
		record_rto(ops);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive = 1;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		passive = 0;
		break;
	default:
		return 1;
	}
	l = leg(ops, passive, &trusted);
	if (l < 0)
		return 1;
	which = l;
	t = bpf_map_lookup_elem(&pepsal_tuning, &which);
	if (!t)
		return 1;

	if (ops->op == BPF_SOCK_OPS_RWND_INIT) {
		if (t->init_rwnd) {
			ops->reply = t->init_rwnd;
			COUNT(tune_init_rwnd);
		}
		return 1;
	}
	/* Established on a SYN: a fast-open child, whose handshake has not
	 * completed (an ordinary child's skb is the client's ACK). */
	tfo_child = ops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && (ops->skb_tcp_flags & TCPHDR_SYN);
	if (!tfo_child || t->watch_us == 1) /* a deferred child is watched by RTT at the handshake's end */
		watch(ops, t);
	if (t->init_cwnd) {
		if (tfo_child && !trusted)
			defer_iw(ops);
		else
			set_iw(ops, t->init_cwnd);
	} else if (t->auto_rate) {
		if (tfo_child) /* no round trip measured yet */
			defer_iw(ops);
		else
			by_rtt(ops, t);
	}
	return 1;
}
