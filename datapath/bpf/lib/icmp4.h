/* ICMP echo responder for the endpoint's IPv4 router (gateway) address. */
#ifndef PYCILIUM_ICMP4_H
#define PYCILIUM_ICMP4_H

#include "eth.h"
#include "ipv4.h"

#define ICMP4_REPLY_TTL 64

/* Answer an echo request to ep->router4 in place, or CTX_CONTINUE. */
static __always_inline int icmp4_echo_reply(struct __sk_buff *skb, const struct endpoint_info *ep,
					    const struct iphdr *ip4, const struct pkt_ctx *ctx)
{
	__u32 l4_off = IPV4_HDR_OFF + ip4->ihl * 4;
	struct icmphdr icmp;
	__be32 addrs[2];
	__be16 old_word, new_word;
	int ret;

	if (!ep->router4 || ip4->daddr != ep->router4 || ip4->protocol != IPPROTO_ICMP)
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, l4_off, &icmp, sizeof(icmp)) < 0)
		return DROP_INVALID_PACKET;
	if (icmp.type != ICMP_ECHO)
		return CTX_CONTINUE;

	__builtin_memcpy(&old_word, &icmp, sizeof(old_word));
	icmp.type = ICMP_ECHOREPLY;
	__builtin_memcpy(&new_word, &icmp, sizeof(new_word));
	if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct icmphdr, checksum),
				old_word, new_word, sizeof(__u16)) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, l4_off, &icmp.type, 1, 0) < 0)
		return DROP_WRITE_FAILED;

	/* Swapping the addresses leaves the header checksum as it was. */
	addrs[0] = ip4->daddr;
	addrs[1] = ip4->saddr;
	if (bpf_skb_store_bytes(skb, IPV4_HDR_OFF + offsetof(struct iphdr, saddr),
				addrs, sizeof(addrs), 0) < 0)
		return DROP_WRITE_FAILED;
	ret = ipv4_ttl_store(skb, ip4, ICMP4_REPLY_TTL);
	if (ret < 0)
		return ret;
	return eth_reply(skb, ep, ctx);
}

#endif
