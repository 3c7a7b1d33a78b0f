/* Anti-spoofing: a container may only send with its own MAC and addresses. */
#ifndef PYCILIUM_SPOOF_H
#define PYCILIUM_SPOOF_H

#include "eth.h"

static __always_inline int spoof_check_mac(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	__u8 smac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, ETH_ALEN, smac, sizeof(smac)) < 0)
		return DROP_INVALID_PACKET;
	if (!eth_addr_equals(smac, ep->mac))
		return DROP_INVALID_SMAC;
	return 0;
}

/* The endpoint's own address, or ICMPv6 (NDisc, MLD, DAD) from link-local or ::. */
static __always_inline int spoof_check6(const struct endpoint_info *ep, const struct ipv6hdr *ip6,
					__u8 l4_proto)
{
	const union v6addr *saddr = (const union v6addr *)&ip6->saddr;

	if (ipv6_addr_equals(saddr, &ep->ipv6))
		return 0;
	if (l4_proto == IPPROTO_ICMPV6 &&
	    (ipv6_addr_is_linklocal(saddr) || ipv6_addr_is_unspec(saddr)))
		return 0;
	return DROP_INVALID_SIP6;
}

static __always_inline int spoof_check4(const struct endpoint_info *ep, __be32 saddr)
{
	if (!ep->ipv4 || saddr != ep->ipv4)
		return DROP_INVALID_SIP4;
	return 0;
}

#endif
