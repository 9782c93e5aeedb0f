// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sk_skb verdict: the kernel-offloaded relay. Each socket of a split
 * connection sits in pepsal_relay; data received on one is redirected to the
 * egress of the other, unless that would break order or the memory budget,
 * in which case it is left on the receiving socket (SK_PASS) for userspace to
 * move: its receive window then closes, which slows the sender (backpressure). */
#include "pepsal.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The fields of the kernel's tcp_sock the relay reads, relocated by CO-RE
 * (bpf_tcp_sock() is not offered to sk_skb programs; bpf_skc_to_tcp_sock is). */
struct tcp_sock {
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 write_seq;
	__u32 copied_seq;
} __attribute__((preserve_access_index));

/* The kernel's skb, for TCP's control block: its first word is the skb's
 * sequence number (struct tcp_skb_cb). */
struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

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
	__u32 next_seq;     /* sequence number of the next byte not seen yet */
	__u32 seq_known;    /* next_seq is set (from the socket's copied_seq, at the first skb) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct relay_dir);
} pepsal_relaydir SEC(".maps");

/* Bytes of a direction that userspace has written to the peer (its only
 * writer is userspace, so it lives apart from the BPF-written counters). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} pepsal_relayusr SEC(".maps");

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

/* The sequence number of the skb's first byte (a negative return: unreadable). */
static __always_inline int skb_seq(struct __sk_buff *skb, __u32 *seq)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);

	return bpf_probe_read_kernel(seq, sizeof(*seq), &kskb->cb[0]);
}

/* Where the socket's reader stands: every byte before it was read, by
 * userspace before the socket entered the map. */
static __always_inline int own_copied_seq(__u64 cookie, __u32 *seq)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&pepsal_relay, &cookie);
	struct tcp_sock *tp;
	int err = -1;

	if (!sk)
		return -1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		*seq = tp->copied_seq;
		err = 0;
	}
	bpf_sk_release(sk);
	return err;
}

/* The kernel hands the verdict whole skbs (tcp_read_skb), also one that
 * begins before what was already read: a retransmission overlapping bytes
 * received before (a sender that resends a larger segment after a loss),
 * or an skb userspace had read part of. Relayed whole, its head would
 * reach the peer twice. Cut it off: 4095 bytes at most per call. Returns
 * the skb's length after the cut, or -1 if the skb must be dropped. */
static __always_inline __s64 cut_overlap(struct __sk_buff *skb, struct relay_dir *d, __u64 cookie)
{
	__u32 seq, len = skb->len;
	__s32 overlap;

	if (skb_seq(skb, &seq) < 0) {
		COUNT(relay_no_seq);
		return len;
	}
	if (!d->seq_known) {
		if (own_copied_seq(cookie, &d->next_seq) < 0) {
			COUNT(relay_no_seq);
			return len;
		}
		d->seq_known = 1;
	}
	overlap = (__s32)(d->next_seq - seq);
	if (overlap <= 0) {
		d->next_seq = seq + len;
		return len;
	}
	if ((__u32)overlap >= len) {
		COUNT(relay_overlap_dropped);
		return -1;
	}
	for (int i = 0; i < 16 && overlap > 0; i++) {
		__s32 cut = overlap > 4095 ? 4095 : overlap;

		if (bpf_skb_adjust_room(skb, -cut, 0, 0) < 0) {
			COUNT(relay_overlap_dropped);
			return -1;
		}
		overlap -= cut;
	}
	if (overlap > 0) {
		COUNT(relay_overlap_dropped);
		return -1;
	}
	COUNT(relay_overlap_trimmed);
	d->next_seq = seq + len;
	return skb->len;
}

static __always_inline int pass(struct relay_dir *d, __u32 len)
{
	d->passed_bytes += len;
	return SK_PASS;
}

SEC("sk_skb/verdict")
int pepsal_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct relay_dir *d = bpf_map_lookup_elem(&pepsal_relaydir, &cookie);
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
	if (cut_overlap(skb, d, cookie) < 0)
		return SK_DROP;
	user = bpf_map_lookup_elem(&pepsal_relayusr, &cookie);
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
