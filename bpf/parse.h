/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parsing for the tc classifier (classify.c). It runs before the kernel has
 * checked anything (ip_rcv comes after tc ingress), so every header is read
 * only once the frame is known to hold it, and only a segment the kernel
 * would take as well formed is diverted. */
#pragma once

#include "pepsal.h"

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define NEXTHDR_FRAGMENT 44

/* What parse found; every value but the first two is a packet left alone. */
enum parsed {
	PARSED_TCP,           /* a TCP segment */
	PARSED_ICMP_ERROR,    /* an ICMP or ICMPv6 error quoting a TCP segment */
	PARSED_NOT_TCP,       /* neither (nor an error about TCP) */
	PARSED_UNPARSED,      /* cut short, or behind IPv6 extension headers */
	PARSED_MALFORMED,     /* header fields that contradict each other */
	PARSED_FRAGMENT,      /* a fragment of TCP or ICMP, first or later */
	PARSED_ICMP_UNPARSED, /* an ICMP error whose quoted segment cannot be read */
};

struct packet {
	/* As on the wire: client -> server. For an ICMP error, the quoted
	 * segment's replies (quoted destination -> quoted source): the tuple
	 * under which the socket that sent it is found. */
	struct bpf_sock_tuple tuple;
	struct flow_key key;
	__u8 flags;   /* TCP flags */
	__u8 tos;
	__u8 options; /* IPv4 header with options */
	__u32 payload; /* bytes of TCP data */
};

/* The 8 bytes that begin ICMP and ICMPv6 messages alike. */
struct icmp_head {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

static __always_inline void set_addrs4(struct packet *p, __be32 src, __be32 dst)
{
	p->tuple.ipv4.saddr = src;
	p->tuple.ipv4.daddr = dst;
	v4_mapped(p->key.client_addr, src);
	v4_mapped(p->key.server_addr, dst);
	p->key.family = AF_INET;
}

static __always_inline void set_addrs6(struct packet *p, struct in6_addr *src, struct in6_addr *dst)
{
	__builtin_memcpy(p->tuple.ipv6.saddr, src, 16);
	__builtin_memcpy(p->tuple.ipv6.daddr, dst, 16);
	__builtin_memcpy(p->key.client_addr, src, 16);
	__builtin_memcpy(p->key.server_addr, dst, 16);
	p->key.family = AF_INET6;
}

static __always_inline void set_ports(struct packet *p, __be16 src, __be16 dst)
{
	if (p->key.family == AF_INET) {
		p->tuple.ipv4.sport = src;
		p->tuple.ipv4.dport = dst;
	} else {
		p->tuple.ipv6.sport = src;
		p->tuple.ipv6.dport = dst;
	}
	p->key.client_port = bpf_ntohs(src);
	p->key.server_port = bpf_ntohs(dst);
}

/* ip_length is the length an IP header gives (IPv4: the packet, IPv6: the
 * payload), or for a GSO skb that gives 0 (BIG TCP, over 64 KiB) what the
 * skb holds past hdrs. */
static __always_inline __u32 ip_length(struct __sk_buff *skb, __u32 given, __u32 hdrs)
{
	if (given == 0 && skb->gso_size)
		return skb->len - hdrs;
	return given;
}

/* parse_tcp reads the TCP header at off, at the start of an IP payload of len
 * bytes. */
static __always_inline int parse_tcp(struct __sk_buff *skb, struct packet *p, __u32 off, __u32 len)
{
	struct tcphdr *tcp = (void *)(long)skb->data + off;

	if ((void *)(tcp + 1) > (void *)(long)skb->data_end)
		return PARSED_UNPARSED;
	if (tcp->doff < 5 || tcp->doff * 4 > len)
		return PARSED_MALFORMED;
	p->flags = ((__u8 *)tcp)[13];
	p->payload = len - tcp->doff * 4; /* doff * 4 <= len: checked above */
	set_ports(p, tcp->source, tcp->dest);
	return PARSED_TCP;
}

/* quoted_ports reads the first 8 bytes of the quoted TCP header at off (the
 * ports and sequence number the kernel's error handler reads), which must
 * end within limit, and records the quoted segment's replies. */
static __always_inline int quoted_ports(struct __sk_buff *skb, struct packet *p, __u32 off, __u32 limit)
{
	__be16 *ports = (void *)(long)skb->data + off;

	if ((void *)(ports + 4) > (void *)(long)skb->data_end || off + 8 > limit)
		return PARSED_ICMP_UNPARSED;
	set_ports(p, ports[1], ports[0]);
	return PARSED_ICMP_ERROR;
}

/* parse_icmp4 reads an ICMP message at off, which ends at limit: only
 * destination unreachable (fragmentation needed among them), time exceeded
 * and parameter problem concern a TCP socket. */
static __always_inline int parse_icmp4(struct __sk_buff *skb, struct packet *p, __u32 off, __u32 limit)
{
	void *end = (void *)(long)skb->data_end;
	struct icmp_head *icmp = (void *)(long)skb->data + off;
	struct iphdr *in;

	if ((void *)(icmp + 1) > end)
		return PARSED_UNPARSED;
	if (icmp->type != 3 && icmp->type != 11 && icmp->type != 12)
		return PARSED_NOT_TCP;
	in = (void *)(icmp + 1);
	if ((void *)(in + 1) > end)
		return PARSED_ICMP_UNPARSED;
	if (in->version != 4 || in->ihl < 5)
		return PARSED_ICMP_UNPARSED;
	if (in->protocol != IPPROTO_TCP)
		return PARSED_NOT_TCP;
	if (in->frag_off & bpf_htons(IP_OFFSET)) /* a later fragment quoted: no ports */
		return PARSED_ICMP_UNPARSED;
	set_addrs4(p, in->daddr, in->saddr);
	return quoted_ports(skb, p, off + sizeof(*icmp) + in->ihl * 4, limit);
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr *ip = (void *)(long)skb->data + ETH_HLEN;
	__u32 hlen, len;

	if ((void *)(ip + 1) > (void *)(long)skb->data_end)
		return PARSED_UNPARSED;
	hlen = ip->ihl * 4;
	len = ip_length(skb, bpf_ntohs(ip->tot_len), ETH_HLEN);
	if (ip->version != 4 || hlen < sizeof(*ip) || len < hlen)
		return PARSED_MALFORMED;
	if (len > skb->len - ETH_HLEN) /* the frame ends before the packet */
		return PARSED_UNPARSED;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_ICMP)
		return PARSED_NOT_TCP;
	/* A later fragment has no TCP header, and marking the first one alone
	 * would split a datagram between this host and the next: none is
	 * diverted, so every fragment goes on to the same place. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return PARSED_FRAGMENT;
	p->tos = ip->tos;
	p->options = hlen > sizeof(*ip);
	if (ip->protocol == IPPROTO_ICMP)
		return parse_icmp4(skb, p, ETH_HLEN + hlen, ETH_HLEN + len);
	set_addrs4(p, ip->saddr, ip->daddr);
	return parse_tcp(skb, p, ETH_HLEN + hlen, len - hlen);
}

/* ipv6_ext says whether nh is an IPv6 extension header that TCP may follow
 * (not ESP: what follows it is encrypted). */
static __always_inline int ipv6_ext(__u8 nh)
{
	switch (nh) {
	case 0: case 43: case NEXTHDR_FRAGMENT: case 51: case 60: case 135: case 139: case 140: case 253: case 254:
		return 1;
	}
	return 0;
}

/* parse_icmp6 reads an ICMPv6 message at off, which ends at limit: the
 * errors are destination unreachable, packet too big, time exceeded and
 * parameter problem. */
static __always_inline int parse_icmp6(struct __sk_buff *skb, struct packet *p, __u32 off, __u32 limit)
{
	void *end = (void *)(long)skb->data_end;
	struct icmp_head *icmp = (void *)(long)skb->data + off;
	struct ipv6hdr *in;

	if ((void *)(icmp + 1) > end)
		return PARSED_UNPARSED;
	if (icmp->type < 1 || icmp->type > 4)
		return PARSED_NOT_TCP;
	in = (void *)(icmp + 1);
	if ((void *)(in + 1) > end || in->version != 6 || ipv6_ext(in->nexthdr))
		return PARSED_ICMP_UNPARSED;
	if (in->nexthdr != IPPROTO_TCP)
		return PARSED_NOT_TCP;
	set_addrs6(p, &in->daddr, &in->saddr);
	return quoted_ports(skb, p, off + sizeof(*icmp) + sizeof(*in), limit);
}

/* parse_fragment6 tells a fragment of TCP or ICMPv6 (whose fragment header
 * is at off) from one of anything else. */
static __always_inline int parse_fragment6(struct __sk_buff *skb, __u32 off)
{
	__u8 *frag = (void *)(long)skb->data + off;

	if ((void *)(frag + 8) > (void *)(long)skb->data_end)
		return PARSED_UNPARSED;
	if (frag[0] == IPPROTO_TCP || frag[0] == IPPROTO_ICMPV6)
		return PARSED_FRAGMENT;
	return PARSED_NOT_TCP;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *p)
{
	struct ipv6hdr *ip6 = (void *)(long)skb->data + ETH_HLEN;
	__u32 hdrs = ETH_HLEN + sizeof(*ip6), len;

	if ((void *)(ip6 + 1) > (void *)(long)skb->data_end)
		return PARSED_UNPARSED;
	if (ip6->version != 6)
		return PARSED_MALFORMED;
	len = ip_length(skb, bpf_ntohs(ip6->payload_len), hdrs);
	if (len > skb->len - hdrs) /* the frame ends before the packet */
		return PARSED_UNPARSED;
	if (ip6->nexthdr == NEXTHDR_FRAGMENT)
		return parse_fragment6(skb, hdrs);
	/* Extension headers are rare on TCP; a flow that uses them is
	 * forwarded unsplit rather than half-parsed. */
	if (ipv6_ext(ip6->nexthdr))
		return PARSED_UNPARSED;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_ICMPV6)
		return PARSED_NOT_TCP;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	if (ip6->nexthdr == IPPROTO_ICMPV6)
		return parse_icmp6(skb, p, hdrs, hdrs + len);
	set_addrs6(p, &ip6->saddr, &ip6->daddr);
	return parse_tcp(skb, p, hdrs, len);
}

/* parse fills p from an Ethernet frame and says what it is (enum parsed). */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	struct ethhdr *eth = (void *)(long)skb->data;

	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return PARSED_UNPARSED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p);
	return PARSED_NOT_TCP;
}
