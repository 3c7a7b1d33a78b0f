/* Parsing a packet into a struct flow: addresses, upper-layer protocol (behind IPv6
 * extension headers), ports or ICMP class. Fragments are refused: policy cannot see
 * their ports.
 */
#ifndef PYCILIUM_FLOW_H
#define PYCILIUM_FLOW_H

#include "drop.h"

#define IPV6_EXTHDR_MAX 4	/* extension headers walked before giving up */
#define TCP_HDR_LEN 20
#define L4_HEAD_LEN 8		/* UDP header; ICMP type, code, checksum, id, sequence */
#define TCP_FLAGS_OFF 13
#define TCP_F_FIN 0x01
#define TCP_F_SYN 0x02
#define TCP_F_RST 0x04
#define TCP_F_ACK 0x10
#define IPV4_FRAG_MASK 0x3fff	/* more-fragments flag and fragment offset */

struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline __u8 icmp4_class(__u8 type)
{
	switch (type) {
	case ICMP_ECHO:
		return FLOW_ICMP_ECHO_REQUEST;
	case ICMP_ECHOREPLY:
		return FLOW_ICMP_ECHO_REPLY;
	case ICMP_DEST_UNREACH:
	case ICMP_TIME_EXCEEDED:
	case ICMP_PARAMETERPROB:
		return FLOW_ICMP_ERROR;
	}
	return FLOW_ICMP_OTHER;
}

static __always_inline __u8 icmp6_class(__u8 type)
{
	if (type == ICMPV6_ECHO_REQUEST)
		return FLOW_ICMP_ECHO_REQUEST;
	if (type == ICMPV6_ECHO_REPLY)
		return FLOW_ICMP_ECHO_REPLY;
	if (type >= 133 && type <= 137)
		return FLOW_ICMP_NDISC;
	if (type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB)
		return FLOW_ICMP_ERROR;
	return FLOW_ICMP_OTHER;
}

/* Ports (or the echo id) from the first L4_HEAD_LEN bytes of the upper-layer header. */
static __always_inline void flow_set_ports(struct flow *f, const __u8 *l4)
{
	__u16 id = (__u16)l4[4] << 8 | l4[5];

	switch (f->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		f->sport = (__u16)l4[0] << 8 | l4[1];
		f->dport = (__u16)l4[2] << 8 | l4[3];
		return;
	case IPPROTO_ICMP:
		f->icmp = icmp4_class(l4[0]);
		break;
	case IPPROTO_ICMPV6:
		f->icmp = icmp6_class(l4[0]);
		break;
	default:
		return;
	}
	/* The echo id as a port, so that a reply is the exact reverse of its request. */
	if (f->icmp == FLOW_ICMP_ECHO_REQUEST)
		f->sport = id;
	else if (f->icmp == FLOW_ICMP_ECHO_REPLY)
		f->dport = id;
}

static __always_inline int flow_has_l4_head(const struct flow *f)
{
	return f->protocol == IPPROTO_UDP || f->protocol == IPPROTO_ICMP ||
	       f->protocol == IPPROTO_ICMPV6;
}

/* Ports, TCP flags, ICMP class. Returns 0 or a drop reason. */
static __always_inline int flow_parse_l4(struct __sk_buff *skb, struct flow *f)
{
	__u8 l4[TCP_HDR_LEN];

	if (f->protocol == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, f->l4_off, l4, TCP_HDR_LEN) < 0)
			return DROP_INVALID_PACKET;
		f->tcp_flags = l4[TCP_FLAGS_OFF];
	} else if (flow_has_l4_head(f)) {
		if (bpf_skb_load_bytes(skb, f->l4_off, l4, L4_HEAD_LEN) < 0)
			return DROP_INVALID_PACKET;
	} else {
		return 0;
	}
	flow_set_ports(f, l4);
	return 0;
}

static __always_inline int ipv6_is_exthdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH ||
	       nexthdr == IPPROTO_FRAGMENT;
}

/* Walk hop-by-hop, routing, destination options and AH headers up to the upper layer. */
static __always_inline int ipv6_skip_exthdrs(struct __sk_buff *skb, struct flow *f, __u8 nexthdr)
{
	struct ipv6_ext_hdr ext;
	__u32 off = IPV6_L4_OFF;
	int i;

#pragma unroll
	for (i = 0; i < IPV6_EXTHDR_MAX; i++) {
		if (!ipv6_is_exthdr(nexthdr))
			break;
		if (nexthdr == IPPROTO_FRAGMENT)
			return DROP_FRAG_IPV6;
		if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
			return DROP_INVALID_EXTHDR;
		off += nexthdr == IPPROTO_AH ? (ext.hdrlen + 2) * 4 : (ext.hdrlen + 1) * 8;
		nexthdr = ext.nexthdr;
	}
	if (nexthdr == IPPROTO_FRAGMENT)
		return DROP_FRAG_IPV6;
	if (ipv6_is_exthdr(nexthdr))
		return DROP_INVALID_EXTHDR;
	f->protocol = nexthdr;
	f->l4_off = off;
	return 0;
}

/* Returns 0 or a drop reason. */
static __always_inline int flow_parse6(struct __sk_buff *skb, const struct ipv6hdr *ip6,
				       struct flow *f)
{
	int ret;

	f->family = ENDPOINT_KEY_IPV6;
	__builtin_memcpy(&f->saddr, &ip6->saddr, sizeof(f->saddr));
	__builtin_memcpy(&f->daddr, &ip6->daddr, sizeof(f->daddr));
	ret = ipv6_skip_exthdrs(skb, f, ip6->nexthdr);
	if (ret < 0)
		return ret;
	return flow_parse_l4(skb, f);
}

static __always_inline int ipv4_is_fragment(const struct iphdr *ip4)
{
	return ip4->frag_off & bpf_htons(IPV4_FRAG_MASK);
}

/* Returns 0 or a drop reason. The caller checked ihl >= 5. */
static __always_inline int flow_parse4(struct __sk_buff *skb, const struct iphdr *ip4,
				       struct flow *f)
{
	f->family = ENDPOINT_KEY_IPV4;
	f->saddr.p[0] = ip4->saddr;
	f->daddr.p[0] = ip4->daddr;
	f->protocol = ip4->protocol;
	f->l4_off = IPV4_HDR_OFF + ip4->ihl * 4;
	if (ipv4_is_fragment(ip4))
		return DROP_FRAG_IPV4;
	return flow_parse_l4(skb, f);
}

/* The flow of the packet an ICMP error quotes (its IP header and first 8 bytes).
 * Returns 0 or a drop reason.
 */
static __always_inline int flow_parse_quoted(struct __sk_buff *skb, const struct flow *outer,
					     struct flow *inner)
{
	__u32 off = outer->l4_off + L4_HEAD_LEN;
	__u8 l4[L4_HEAD_LEN];

	inner->family = outer->family;
	if (outer->family == ENDPOINT_KEY_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return DROP_INVALID_PACKET;
		__builtin_memcpy(&inner->saddr, &ip6.saddr, sizeof(inner->saddr));
		__builtin_memcpy(&inner->daddr, &ip6.daddr, sizeof(inner->daddr));
		inner->protocol = ip6.nexthdr;
		inner->l4_off = off + sizeof(ip6);
	} else {
		struct iphdr ip4;

		if (bpf_skb_load_bytes(skb, off, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
			return DROP_INVALID_PACKET;
		inner->saddr.p[0] = ip4.saddr;
		inner->daddr.p[0] = ip4.daddr;
		inner->protocol = ip4.protocol;
		inner->l4_off = off + ip4.ihl * 4;
	}
	if (inner->protocol != IPPROTO_TCP && !flow_has_l4_head(inner))
		return 0;
	if (bpf_skb_load_bytes(skb, inner->l4_off, l4, sizeof(l4)) < 0)
		return DROP_INVALID_PACKET;
	flow_set_ports(inner, l4);
	return 0;
}

/* The port policy matches on: TCP and UDP destination ports; 0 for anything else. */
static __always_inline __u16 flow_policy_port(const struct flow *f)
{
	if (f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP)
		return f->dport;
	return 0;
}

#endif
