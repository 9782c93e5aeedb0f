// SPDX-License-Identifier: GPL-2.0
/* sk_skb verdict: the kernel-offloaded relay. Each socket of a split
 * connection sits in pepsal_relay; data received on one is redirected to the
 * egress of the other, unless that would break order or the memory budget,
 * in which case it is left on the receiving socket (SK_PASS) for userspace to
 * move: its receive window then closes, which slows the sender (backpressure). */
#include "pepsal.h"

char __license[] SEC("license") = "GPL";

/* The fields of the kernel's tcp_sock the relay reads, relocated by CO-RE
 * (bpf_tcp_sock() is not offered to sk_skb programs; bpf_skc_to_tcp_sock is). */
struct tcp_sock {
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* Both legs of every split connection in kernel mode, keyed by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} pepsal_relay SEC(".maps");

/* One direction of a connection, keyed by the cookie of the receiving socket.
 * Every byte the verdict sees is counted once, in kernel_bytes or
 * passed_bytes: userspace acts on EOF only when their sum reaches what TCP
 * received. */
struct relay_dir {
	__u64 peer_cookie;  /* where this socket's data goes */
	__u64 peer_base;    /* peer's acked sequence space that is not data (1 for a dialed socket: its SYN) */
	__u64 budget;       /* max bytes redirected toward the peer and not yet in its send queue */
	__u64 kernel_bytes; /* redirected in the kernel */
	__u64 passed_bytes; /* left to userspace */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct relay_dir);
} pepsal_relay_dirs SEC(".maps");

/* Bytes of a direction that userspace has written to the peer (its only
 * writer is userspace, so it lives apart from the BPF-written counters). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} pepsal_relay_user SEC(".maps");

/* Data bytes that ever entered the peer's TCP send queue: those its remote
 * acknowledged plus those still queued. bytes_acked counts sequence space, so
 * a dialed peer's SYN is in it: peer_base takes it out. -1 if the peer is gone. */
static __always_inline __s64 peer_queued(struct relay_dir *d)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&pepsal_relay, &d->peer_cookie);
	struct tcp_sock *tp;
	__s64 queued = -1;

	if (!peer)
		return -1;
	tp = bpf_skc_to_tcp_sock(peer);
	if (tp)
		queued = tp->bytes_acked - d->peer_base + (__u32)(tp->write_seq - tp->snd_una);
	bpf_sk_release(peer);
	return queued;
}

static __always_inline int pass(struct relay_dir *d, __u32 len)
{
	d->passed_bytes += len;
	return SK_PASS;
}

SEC("sk_skb/verdict")
int pepsal_relay_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct relay_dir *d = bpf_map_lookup_elem(&pepsal_relay_dirs, &cookie);
	__u64 *user, user_bytes = 0;
	__s64 queued, backlog;

	if (!d) {
		COUNT(relay_pass_unknown);
		return SK_PASS;
	}
	/* The FIN arrives as an empty skb. Redirected, it would be sent after
	 * userspace has shut the peer down, and fail the peer with EPIPE; the
	 * FIN itself is seen by userspace as EOF, so nothing is lost dropping it. */
	if (skb->len == 0) {
		COUNT(relay_drop_empty);
		return SK_DROP;
	}
	user = bpf_map_lookup_elem(&pepsal_relay_user, &cookie);
	if (user)
		user_bytes = *user;

	/* Userspace still has bytes of this direction to write: anything
	 * redirected now would overtake them. */
	if (d->passed_bytes != user_bytes) {
		COUNT(relay_pass_order);
		return pass(d, skb->len);
	}
	/* What was redirected and is not yet in the peer's send queue waits in
	 * the peer's psock backlog, which the kernel does not bound. The send
	 * queue itself is bounded by the peer's sndbuf. */
	queued = peer_queued(d);
	if (queued < 0) {
		COUNT(relay_pass_no_peer);
		return pass(d, skb->len);
	}
	backlog = (__s64)(d->kernel_bytes + user_bytes) - queued;
	if (backlog < 0)
		backlog = 0;
	if ((__u64)backlog + skb->len > d->budget) {
		COUNT(relay_pass_budget);
		return pass(d, skb->len);
	}
	if (bpf_sk_redirect_hash(skb, &pepsal_relay, &d->peer_cookie, 0) != SK_PASS) {
		COUNT(relay_pass_no_peer);
		return pass(d, skb->len);
	}
	d->kernel_bytes += skb->len;
	COUNT(relay_redirected);
	return SK_PASS;
}
