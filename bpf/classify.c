// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc ingress classifier: decides which packets of an intercepted interface go
 * to the local proxy (by setting the fwmark that policy routing sends to the
 * local table) and which are forwarded untouched. */
#include "steering.h"
#include "parse.h"

#include <linux/pkt_cls.h>

char __license[] SEC("license") = "Dual BSD/GPL";

/* The daemon's admission state (struct admission); only the classifier reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct admission);
} pepsal_admit SEC(".maps");

/* Sources whose SYNs may carry data the proxy answers before the handshake
 * completes (--fastopen-from; IPv4 v4-mapped): the daemon's, read only here. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct exclude_key);
	__type(value, __u8);
} pepsal_tfo_from SEC(".maps");

/* Client addresses that hold --max-conns-per-client split connections:
 * written by the daemon when one reaches it, deleted when it falls below
 * the low-water mark. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct source_key);
	__type(value, __u8);
} pepsal_srcfull SEC(".maps");

static __always_inline struct admission *admission(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&pepsal_admit, &zero);
}

static __always_inline int fastopen_trusted(struct packet *p)
{
	struct exclude_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, p->key.client_addr, 16);
	return bpf_map_lookup_elem(&pepsal_tfo_from, &k) != 0;
}

static __always_inline int source_full(struct packet *p)
{
	struct source_key k;

	__builtin_memcpy(k.addr, p->key.client_addr, 16);
	return bpf_map_lookup_elem(&pepsal_srcfull, &k) != 0;
}

enum local_match {
	LOCAL_NONE = 0,
	LOCAL_SOCKET = 1,
	LOCAL_TIME_WAIT = 2,
	LOCAL_LISTENER = 3, /* only a listener: no connection of its own */
};

/* How long a SYN cookie can be valid: the kernel takes a cookie of the
 * current or the previous 60 s period (MAX_SYNCOOKIE_AGE 2), and none at
 * all 2 minutes after the listener's last overflow (TCP_SYNCOOKIE_VALID). */
#define COOKIE_LIFETIME_NS (120ULL * 1000000000ULL)

/* local_socket says whether the packet belongs to a connection that ends on
 * this host (a split connection, a handshake in progress, or the router's own
 * services), like iptables' -m socket. Listeners do not count: a listener
 * matches any flow to its port (LOCAL_LISTENER says so). Nor does a TIME_WAIT socket: the tuple of a
 * closed split connection may be reused by a new flow that is forwarded (the
 * daemon died, say), and delivered locally its packets would only meet the
 * TIME_WAIT's ACKs and resets. */
static __always_inline enum local_match local_socket(struct __sk_buff *skb, struct packet *p)
{
	struct bpf_sock *sk;
	enum local_match local = LOCAL_SOCKET;

	/* Constant sizes: the verifier wants the tuple length bounded. */
	if (p->key.family == AF_INET)
		sk = bpf_skc_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_skc_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return LOCAL_NONE;
	if (sk->state == BPF_TCP_LISTEN)
		local = LOCAL_LISTENER;
	else if (sk->state == BPF_TCP_TIME_WAIT)
		local = LOCAL_TIME_WAIT;
	bpf_sk_release(sk);
	return local;
}

enum route {
	ROUTE_ONWARD = 0,     /* the kernel forwards it */
	ROUTE_LOCAL = 1,      /* addressed to the router itself */
	ROUTE_UNROUTABLE = 2, /* no route, or an unreachable, blackholed or prohibited one */
};

static __always_inline int fib_lookup(struct __sk_buff *skb, struct packet *p, __u32 flags)
{
	struct bpf_fib_lookup fib = {};

	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = IPPROTO_TCP;
	fib.sport = p->tuple.ipv4.sport;
	fib.dport = p->tuple.ipv4.dport;
	if (p->key.family == AF_INET) {
		fib.family = AF_INET;
		fib.tos = p->tos;
		fib.ipv4_src = p->tuple.ipv4.saddr;
		fib.ipv4_dst = p->tuple.ipv4.daddr;
	} else {
		fib.family = AF_INET6;
		fib.sport = p->tuple.ipv6.sport;
		fib.dport = p->tuple.ipv6.dport;
		__builtin_memcpy(fib.ipv6_src, p->tuple.ipv6.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, p->tuple.ipv6.daddr, 16);
	}
	return bpf_fib_lookup(skb, &fib, sizeof(fib), flags);
}

/* route says what the kernel does with the packet. bpf_fib_lookup answers
 * NOT_FWDED both for a local (or broadcast) route and for no route at all.
 * The local table comes first (rule 0): if the main table alone would
 * forward the packet, what stopped it was a local route; if the main table
 * has no route either, nothing routes it and the kernel drops it. (IPv4
 * keeps its local routes in the main table until a policy rule exists;
 * pepsal's fwmark rule exists while it is attached.) */
static __always_inline enum route route(struct __sk_buff *skb, struct packet *p)
{
	int rc = fib_lookup(skb, p, 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return ROUTE_ONWARD;
	if (rc != BPF_FIB_LKUP_RET_NOT_FWDED)
		return ROUTE_UNROUTABLE;
	rc = fib_lookup(skb, p, BPF_FIB_LOOKUP_DIRECT); /* the main table, no rules */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return ROUTE_LOCAL;
	return ROUTE_UNROUTABLE;
}

static __always_inline int listener_registered(__u32 family)
{
	__u32 slot = family == AF_INET ? LISTENER_V4 : LISTENER_V6;
	struct bpf_sock *sk = bpf_map_lookup_elem(&pepsal_listen, &slot);

	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline int port_wanted(struct config *cfg, __u16 port)
{
	return cfg->all_ports || bpf_map_lookup_elem(&pepsal_ports, &port);
}

static __always_inline int excluded(struct packet *p)
{
	struct exclude_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, p->key.server_addr, 16);
	return bpf_map_lookup_elem(&pepsal_exclude, &k) != 0;
}

/* left_alone counts a packet that parse says is neither a TCP segment nor an
 * ICMP error about one, and says so. */
static __always_inline int left_alone(int parsed)
{
	switch (parsed) {
	case PARSED_TCP:
	case PARSED_ICMP_ERROR:
		return 0;
	case PARSED_NOT_TCP:
		COUNT(pkt_not_tcp);
		break;
	case PARSED_MALFORMED:
		COUNT(pkt_malformed);
		break;
	case PARSED_FRAGMENT:
		COUNT(pkt_fragment);
		break;
	case PARSED_ICMP_UNPARSED:
		COUNT(icmp_unparsed);
		break;
	default:
		COUNT(pkt_unparsed);
	}
	return 1;
}

/* cookie_flow handles a packet that only a listener matches, when its SYN
 * was diverted: the proxy's listener answered that SYN with a SYN cookie
 * (its queue was full, or tcp_syncookies=2) and kept no request socket, so
 * the client's ACK finds no socket. It must reach the listener, which
 * checks the cookie and makes the connection; forwarded, the server would
 * reset it. Only such a flow gets here cheaply: sk_lookup steers a diverted
 * flow's key to the proxy's listener in the classifier's own socket lookup
 * too, and forwarded traffic rarely meets a listener at all. Returns 1 when
 * it decided (and counted). */
static __always_inline int cookie_flow(struct __sk_buff *skb, struct packet *p, struct config *cfg)
{
	struct divert_info *info;

	/* A SYN-ACK is a reply to a socket of ours; a bare FIN or a segment
	 * without flags cannot complete a cookie handshake. */
	if ((p->flags & TCP_FLAG_SYN) || !(p->flags & (TCP_FLAG_ACK | TCP_FLAG_RST)))
		return 0;
	info = bpf_map_lookup_elem(&pepsal_diverted, &p->key);
	if (!info)
		return 0;
	/* An entry older than any valid cookie is a SYN whose handshake never
	 * completed (the daemon deletes the entry at accept): the flow is not
	 * the proxy's, whatever follows. */
	if (bpf_ktime_get_ns() - info->syn_ns > COOKIE_LIFETIME_NS) {
		bpf_map_delete_elem(&pepsal_diverted, &p->key);
		COUNT(cookie_stale_forwarded);
		return 1;
	}
	skb->mark = cfg->mark;
	/* The client's RST is for whoever answered its SYN: the router. The
	 * listener drops it; the server never heard of the flow. */
	if (p->flags & TCP_FLAG_RST)
		COUNT(rst_cookie_local);
	else
		COUNT(ack_cookie_steered);
	return 1;
}

/* follow_socket: everything but the first SYN follows the socket it belongs
 * to, so flows that were forwarded before (or when the proxy was down) keep
 * being forwarded, and replies to a transparent upstream socket (addressed to
 * the client) reach it. */
static __always_inline void follow_socket(struct __sk_buff *skb, struct packet *p, struct config *cfg)
{
	switch (local_socket(skb, p)) {
	case LOCAL_SOCKET:
		skb->mark = cfg->mark;
		COUNT(pkt_local_socket);
		break;
	case LOCAL_TIME_WAIT:
		COUNT(pkt_timewait_forwarded);
		break;
	case LOCAL_LISTENER:
		if (cookie_flow(skb, p, cfg))
			break;
		COUNT(pkt_forwarded);
		break;
	default:
		COUNT(pkt_forwarded);
	}
}

/* icmp_error: an error about a segment that a socket of this host sent goes
 * to that socket, as its replies do: a server leg with --transparent sends
 * from the client's address and a client leg from the server's, so the
 * kernel would forward the error to the host that owns the address, and the
 * socket would never learn (of a smaller path MTU, say). The kernel checks
 * the quoted sequence number against the socket's window. */
static __always_inline void icmp_error(struct __sk_buff *skb, struct packet *p, struct config *cfg)
{
	if (local_socket(skb, p) == LOCAL_SOCKET) {
		skb->mark = cfg->mark;
		COUNT(icmp_local);
		return;
	}
	COUNT(icmp_forwarded);
}

/* divert_syn decides whether a SYN that opens a flow is diverted to the
 * proxy, and says whether it was. */
static __always_inline int divert_syn(struct __sk_buff *skb, struct packet *p, struct config *cfg)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct divert_info info = {};
	struct iface_state *iface;
	struct admission *adm;

	/* A SYN with FIN or RST: the proxy's listener would drop it, the
	 * server decides what it means. */
	if (p->flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
		COUNT(syn_bad_flags);
		return 0;
	}
	/* IPv4 options (a source route, a security label) would end at the
	 * proxy, which cannot carry them to the server: forwarded unsplit, as
	 * IPv6 extension headers are. */
	if (p->options) {
		COUNT(syn_ip_options);
		return 0;
	}
	iface = bpf_map_lookup_elem(&pepsal_ifaces, &ifindex);
	if (iface && iface->return_only) {
		COUNT(syn_bypass_return_iface);
		return 0;
	}
	if (!port_wanted(cfg, p->key.server_port)) {
		COUNT(syn_bypass_port);
		return 0;
	}
	if (excluded(p)) {
		COUNT(syn_bypass_excluded);
		return 0;
	}
	switch (route(skb, p)) {
	case ROUTE_LOCAL:
		COUNT(syn_bypass_local);
		return 0;
	case ROUTE_UNROUTABLE:
		COUNT(syn_bypass_unroutable);
		return 0;
	default:
		break;
	}
	if (!listener_registered(p->key.family)) {
		COUNT(syn_bypass_no_listener);
		return 0;
	}
	adm = admission();
	/* Data in a SYN is answered before the handshake proves the source
	 * (cookie-less fast open): only from --fastopen-from. Elsewhere the
	 * server answers it as it would without pepsal. The prefixes are looked
	 * up only for a SYN with data, the only one they concern. */
	if (p->payload) {
		if (fastopen_trusted(p)) {
			info.flags = DIVERT_TRUSTED;
		} else if (adm && adm->syn_data_check) {
			COUNT(syn_data_untrusted);
			return 0;
		}
	}
	if (adm && adm->full) {
		/* Past --max-conns (until the low-water mark): forwarded unsplit,
		 * like a dead daemon, rather than accepted and then reset. */
		COUNT(syn_bypass_full);
		return 0;
	}
	if (source_full(p)) {
		/* This client holds --max-conns-per-client: the others keep room. */
		COUNT(syn_bypass_source);
		return 0;
	}
	info.tos = p->tos;
	info.syn_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&pepsal_diverted, &p->key, &info, BPF_ANY)) {
		/* Unreachable for an LRU map, but never divert what sk_lookup would not steer. */
		COUNT(syn_bypass_no_listener);
		return 0;
	}
	skb->mark = cfg->mark;
	COUNT(syn_diverted);
	return 1;
}

/* new_syn: a SYN that is not diverted ends any record of an earlier SYN of
 * the same tuple (one that never completed), which would otherwise send
 * this flow's ACKs to the proxy's listener (cookie_flow) while it lasts. */
static __always_inline void new_syn(struct __sk_buff *skb, struct packet *p, struct config *cfg)
{
	if (!divert_syn(skb, p, cfg))
		bpf_map_delete_elem(&pepsal_diverted, &p->key);
}

/* The classifier never drops or redirects: it only marks what goes to the
 * proxy's sockets (TC_ACT_UNSPEC in every case). */
SEC("tc")
int pepsal_classify(struct __sk_buff *skb)
{
	struct packet p = {};
	struct config *cfg;
	__u32 zero = 0;
	int parsed = parse(skb, &p);

	if (left_alone(parsed))
		return TC_ACT_UNSPEC;
	cfg = bpf_map_lookup_elem(&pepsal_config, &zero);
	if (!cfg) {
		COUNT(pkt_no_config);
		return TC_ACT_UNSPEC;
	}
	if (parsed == PARSED_ICMP_ERROR)
		icmp_error(skb, &p, cfg);
	else if (!(p.flags & TCP_FLAG_SYN) || (p.flags & TCP_FLAG_ACK))
		follow_socket(skb, &p, cfg);
	else
		new_syn(skb, &p, cfg);
	return TC_ACT_UNSPEC;
}
