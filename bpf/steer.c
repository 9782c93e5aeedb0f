// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sk_lookup: hands the SYNs that the classifier diverted to the proxy's
 * listener. Runs for every local socket lookup in the namespace, so it must
 * touch nothing else (the router's own services, the proxy's own dials). */
#include "steering.h"

#include <linux/in.h>

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("sk_lookup")
int pepsal_steer(struct bpf_sk_lookup *ctx)
{
	struct flow_key key = {};
	struct bpf_sock *sk;
	__u32 slot;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	if (ctx->family == AF_INET) {
		v4_mapped(key.client_addr, ctx->remote_ip4);
		v4_mapped(key.server_addr, ctx->local_ip4);
		slot = LISTENER_V4;
	} else {
		__builtin_memcpy(key.client_addr, ctx->remote_ip6, 16);
		__builtin_memcpy(key.server_addr, ctx->local_ip6, 16);
		slot = LISTENER_V6;
	}
	key.family = ctx->family;
	key.client_port = bpf_ntohs(ctx->remote_port);
	key.server_port = ctx->local_port;

	/* The entry stays: sock_ops recognises the accepted socket by it, and
	 * the daemon reads the SYN's ToS from it, then deletes it. */
	if (!bpf_map_lookup_elem(&pepsal_diverted, &key))
		return SK_PASS;

	sk = bpf_map_lookup_elem(&pepsal_listen, &slot);
	if (!sk) {
		COUNT(steer_no_listener);
		return SK_PASS;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		COUNT(steer_assign_failed);
		return SK_PASS;
	}
	COUNT(steer_assigned);
	return SK_PASS;
}
