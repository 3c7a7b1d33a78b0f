/* ICMPv6 echo responder for the endpoint's router address. */
#ifndef PYCILIUM_ICMP6_H
#define PYCILIUM_ICMP6_H

#include "eth.h"
#include "ipv6.h"

#define ICMP6_REPLY_HOP_LIMIT 64
#define ICMP6_CSUM_OFF (IPV6_L4_OFF + offsetof(struct icmp6hdr, icmp6_cksum))

/* Answer an echo request to ep->router6 in place, or CTX_CONTINUE. */
static __always_inline int icmp6_echo_reply(struct __sk_buff *skb, const struct endpoint_info *ep,
					    const struct ipv6hdr *ip6, const struct pkt_ctx *ctx)
{
	struct ipv6hdr reply = *ip6;
	struct icmp6hdr icmp6;
	__be16 old_word, new_word;

	if (!ipv6_addr_equals((const union v6addr *)&ip6->daddr, &ep->router6))
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, IPV6_L4_OFF, &icmp6, sizeof(icmp6)) < 0)
		return DROP_INVALID_PACKET;
	if (icmp6.icmp6_type != ICMPV6_ECHO_REQUEST)
		return CTX_CONTINUE;

	/* Swapping the addresses leaves the pseudo-header sum as it was; only the type changes. */
	__builtin_memcpy(&old_word, &icmp6, sizeof(old_word));
	icmp6.icmp6_type = ICMPV6_ECHO_REPLY;
	__builtin_memcpy(&new_word, &icmp6, sizeof(new_word));
	if (bpf_l4_csum_replace(skb, ICMP6_CSUM_OFF, old_word, new_word, sizeof(__u16)) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV6_L4_OFF, &icmp6.icmp6_type, 1, 0) < 0)
		return DROP_WRITE_FAILED;

	reply.saddr = ip6->daddr;
	reply.daddr = ip6->saddr;
	reply.hop_limit = ICMP6_REPLY_HOP_LIMIT;
	if (bpf_skb_store_bytes(skb, IPV6_HDR_OFF, &reply, sizeof(reply), 0) < 0)
		return DROP_WRITE_FAILED;
	return eth_reply(skb, ep, ctx);
}

#endif
