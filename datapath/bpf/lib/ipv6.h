/* IPv6 header helpers. */
#ifndef PYCILIUM_IPV6_H
#define PYCILIUM_IPV6_H

#include "drop.h"

struct ipv6_pseudo_hdr {
	union v6addr saddr;
	union v6addr daddr;
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

/* Returns 0 or a drop reason. The caller checked hop_limit > 1. */
static __always_inline int ipv6_hoplimit_dec(struct __sk_buff *skb, const struct ipv6hdr *ip6)
{
	__u8 hop_limit = ip6->hop_limit - 1;

	if (bpf_skb_store_bytes(skb, IPV6_HDR_OFF + offsetof(struct ipv6hdr, hop_limit),
				&hop_limit, sizeof(hop_limit), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* Partial checksum of the pseudo header, to seed an upper-layer checksum. */
static __always_inline __s64 ipv6_pseudo_csum(const union v6addr *saddr, const union v6addr *daddr,
					      __u32 len, __u8 nexthdr)
{
	struct ipv6_pseudo_hdr ph = {};

	ph.saddr = *saddr;
	ph.daddr = *daddr;
	ph.len = bpf_htonl(len);
	ph.nexthdr = nexthdr;
	return bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
}

#endif
