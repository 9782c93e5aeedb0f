/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by pepsal's BPF programs, and their decision counters. Every map is named so that
 * `bpftool map show` reads like the data path; every decision is counted. Every map is pinned by
 * name (LIBBPF_PIN_BY_NAME): the loader loads each object with the attachment's pin directory
 * as PinPath, so a map two objects declare is created by the first and shared by the next. */
#pragma once

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

/* The connection as the client sees it: client -> original server.
 * IPv4 addresses are stored v4-mapped (::ffff:a.b.c.d). */
struct flow_key {
	__u8 client_addr[16];
	__u8 server_addr[16];
	__u16 client_port; /* host byte order */
	__u16 server_port; /* host byte order */
	__u32 family;
};

/* What the classifier saw on a diverted SYN. */
struct divert_info {
	__u32 tos;    /* IPv4 ToS or IPv6 traffic class, for the upstream SYN */
	__u32 flags;  /* DIVERT_* */
	__u64 syn_ns; /* when (bpf_ktime_get_ns): a SYN cookie answering it expires */
};

/* The SYN's source is in --fastopen-from: its data may be answered before
 * the handshake completes (sock_ops sets the initial window at once). */
#define DIVERT_TRUSTED 0x1

/* One set of counters, one field per decision (per CPU, summed in userspace). */
struct counters {
	/* classifier (tc ingress), SYNs of new flows */
	__u64 syn_diverted;           /* steered to the proxy */
	__u64 syn_bypass_port;        /* destination port not in --ports */
	__u64 syn_bypass_excluded;    /* destination in an --exclude prefix */
	__u64 syn_bypass_local;       /* addressed to the router itself */
	__u64 syn_bypass_unroutable;  /* no forwarding route: left to the kernel */
	__u64 syn_bypass_no_listener; /* no proxy serving: fail open */
	__u64 syn_bypass_full;        /* the proxy holds --max-conns (or ran out of fds): fail open */
	__u64 syn_bypass_return_iface; /* arrived on a return-only interface */
	__u64 syn_bad_flags;          /* SYN with FIN or RST: forwarded untouched */
	__u64 syn_ip_options;         /* SYN with IPv4 options: forwarded untouched */
	/* classifier, other TCP packets */
	__u64 pkt_local_socket;       /* belongs to a local socket: delivered locally */
	__u64 pkt_forwarded;          /* no local socket: forwarded untouched */
	__u64 pkt_timewait_forwarded; /* only a TIME_WAIT socket matches: forwarded untouched */
	__u64 pkt_not_tcp;            /* not TCP over IPv4/IPv6: untouched */
	__u64 pkt_unparsed;           /* cut short, or IPv6 extension headers: untouched */
	__u64 pkt_no_config;          /* pepsal_config unreadable: untouched */
	__u64 pkt_malformed;          /* IP or TCP header fields that contradict each other: untouched */
	__u64 pkt_fragment;           /* fragment of TCP or ICMP, first or later: untouched */
	/* classifier, packets of a diverted flow that only the proxy's listener
	 * matches: its SYN was answered with a SYN cookie (listen queue full,
	 * or tcp_syncookies=2), so no request socket holds the handshake */
	__u64 ack_cookie_steered;     /* ACK (maybe with data): delivered to the listener, which checks the cookie */
	__u64 rst_cookie_local;       /* RST: delivered to the listener, which drops it (the server never saw the flow) */
	__u64 cookie_stale_forwarded; /* ACK or RST, but the SYN was diverted too long ago for a cookie to be valid: forwarded, entry deleted */
	/* classifier, ICMP and ICMPv6 errors quoting a TCP segment */
	__u64 icmp_local;             /* sent by a local socket: delivered to it */
	__u64 icmp_forwarded;         /* no local socket sent it: forwarded untouched */
	__u64 icmp_unparsed;          /* quoted segment unreadable: forwarded untouched */
	/* sk_lookup */
	__u64 steer_assigned;         /* diverted SYN handed to the listener */
	__u64 steer_no_listener;      /* diverted SYN, but listener gone: RST by kernel */
	__u64 steer_assign_failed;    /* bpf_sk_assign refused */
	/* sk_skb relay verdict */
	__u64 relay_redirected;       /* skb redirected to the peer in the kernel */
	__u64 relay_pass_budget;      /* left to userspace: peer's in-flight budget full */
	__u64 relay_pass_order;       /* left to userspace: userspace still owes earlier bytes */
	__u64 relay_pass_no_peer;     /* left to userspace: peer not in the relay map */
	__u64 relay_pass_unknown;     /* socket without relay state */
	__u64 relay_drop_empty;       /* empty skb (a bare FIN): nothing to relay */
	__u64 relay_overlap_trimmed;  /* skb began with bytes already relayed (a retransmission that overlaps): those cut off */
	__u64 relay_overlap_dropped;  /* skb held nothing new, or its overlap could not be cut: dropped (then the books reset the connection) */
	__u64 relay_no_seq;           /* skb's sequence number unreadable: relayed whole */
	/* sock_ops tuning */
	__u64 tune_init_cwnd;         /* initial congestion window set on a leg */
	__u64 tune_init_rwnd;         /* initial receive window set on a leg */
	__u64 tune_failed;            /* bpf_setsockopt refused */
	/* appended (layout 7) */
	__u64 syn_data_untrusted;     /* SYN carrying data from outside --fastopen-from, where the listeners take data in SYNs: forwarded unsplit */
	__u64 syn_bypass_source;      /* its client address holds --max-conns-per-client: fail open */
	__u64 tune_iw_deferred;       /* client leg's initial window put off until the handshake completes (fast open child not from --fastopen-from, or any with --role auto: no RTT yet) */
	__u64 tune_iw_late;           /* deferred initial window refused: the leg had sent data before the handshake completed */
	/* appended (layout 8): --role auto */
	__u64 tune_auto_iw;           /* initial window sized by the leg's handshake RTT (one BDP of the assumed rate) */
	__u64 tune_auto_long;         /* leg long by its handshake RTT: the long legs' congestion control set */
	__u64 tune_auto_no_rtt;       /* no handshake RTT measured (a SYN cookie's ACK): the kernel's initial window stays */
	/* appended (layout 9): long legs through link outages */
	__u64 tune_rto_watched;       /* long leg whose retransmission timeouts are recorded (pepsal_stalled) */
	__u64 tune_rto_recorded;      /* a watched leg's retransmission timeout, recorded for the daemon to kick when the link returns */
};

struct config {
	__u32 mark;          /* fwmark that routes a packet to the local table */
	__u32 all_ports;     /* 1: intercept every destination port */
	__u32 route_table;   /* policy routing table with the local default route */
	__u32 rule_priority; /* priority of the fwmark rule pointing at it */
	__u32 fastopen_restore; /* net.ipv4.tcp_fastopen to restore at detach, plus 1; 0: untouched */
	__u32 early_demux_restore; /* net.ipv4.tcp_early_demux to restore at detach, plus 1; 0: untouched */
	__u32 tw_reuse_restore;    /* net.ipv4.tcp_tw_reuse to restore at detach, plus 1; 0: untouched */
	__u32 pad;
	__u64 netns_cookie;  /* the namespace of this attachment (sock_ops sees every namespace) */
};

/* Admission: written by the daemon when its connection table crosses the
 * --max-conns high-water mark (full = 1) and falls back below the low-water
 * mark (full = 0); read by the classifier on every new SYN. */
struct admission {
	__u32 full; /* 1: divert no new SYN, forward it unsplit */
	/* 1: the proxy's listeners take data in SYNs without a cookie (fast
	 * open): a SYN carrying data is diverted only from a pepsal_tfo_from
	 * prefix, for a spoofed one would make the proxy dial its server and
	 * send the reply at the spoofed address. */
	__u32 syn_data_check;
};

/* A client address (IPv4 v4-mapped), key of pepsal_srcfull. */
struct source_key {
	__u8 addr[16];
};

/* Tuning of one leg of every split connection, applied by sock_ops. */
struct leg_tuning {
	__u32 init_cwnd; /* segments; 0: kernel default, or by RTT (auto_rate) */
	__u32 init_rwnd; /* segments; 0: kernel default */
	/* --role auto: without init_cwnd, the initial window is one
	 * bandwidth-delay product of this rate at the leg's handshake RTT
	 * (bytes per millisecond; 0: off), within auto_min..auto_max segments */
	__u32 auto_rate;
	__u16 auto_min, auto_max;
	/* a leg whose handshake RTT is at least this is long (microseconds):
	 * it gets long_cc ("": keep the socket's) */
	__u32 auto_long_us;
	char long_cc[16];
	/* record this leg's retransmission timeouts in pepsal_stalled (the
	 * daemon makes it retransmit when the link returns): 0 off, 1 every
	 * such leg, else a leg whose handshake RTT is at least this (us) */
	__u32 watch_us;
};

/* A watched leg in retransmission back-off, key of pepsal_stalled; IPv4
 * addresses v4-mapped. */
struct stall_key {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 family;
};

/* Its latest timeout: an ICMP error quoting snd_una undoes a back-off
 * step (RFC 6069, tcp_ld_RTO_revert), one per timeout. */
struct stall {
	__u64 last_ns;  /* bpf_ktime_get_ns of the timeout */
	__u32 snd_una;  /* oldest unacknowledged byte */
	__u32 timeouts; /* consecutive timeouts so far (icsk_retransmits) */
};

enum leg {
	LEG_CLIENT = 0, /* accepted sockets */
	LEG_SERVER = 1, /* dialed sockets */
};

/* How the classifier is attached to an interface, so that detach can undo it. */
struct iface_state {
	__u32 tc_mode;        /* 1: tcx link, 2: clsact filter */
	__u32 created_clsact; /* the clsact qdisc was added by pepsal */
	__u32 return_only;    /* only return traffic of local sockets (--transparent): no SYN is diverted here */
};

/* Address prefix that is never intercepted. IPv4 prefixes are v4-mapped. */
struct exclude_key {
	__u32 prefixlen;
	__u8 addr[16];
};

enum listener_slot {
	LISTENER_V4 = 0,
	LISTENER_V6 = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} pepsal_counters SEC(".maps");

static __always_inline struct counters *counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&pepsal_counters, &zero);
}

#define COUNT(field)                                  \
	do {                                          \
		struct counters *__c = counters();    \
		if (__c)                              \
			__c->field++;                 \
	} while (0)

static __always_inline void v4_mapped(__u8 out[16], __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &addr_be, 4);
}
