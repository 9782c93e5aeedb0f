/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps shared by the classifier and the sk_lookup steering program. */
#pragma once

#include "pepsal.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} pepsal_config SEC(".maps");

/* Interfaces the classifier is attached to, by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct iface_state);
} pepsal_ifaces SEC(".maps");

/* Destination ports to intercept (when config.all_ports is 0). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u16);
	__type(value, __u8);
} pepsal_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct exclude_key);
	__type(value, __u8);
} pepsal_exclude SEC(".maps");

/* The proxy's listening sockets; an entry vanishes when its socket closes,
 * which is what makes a dead daemon fail open. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} pepsal_listen SEC(".maps");

/* SYNs the classifier diverted, so that sk_lookup steers those and nothing else. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct divert_info);
} pepsal_diverted SEC(".maps");
