/* IPv4 header helpers. */
#ifndef PYCILIUM_IPV4_H
#define PYCILIUM_IPV4_H

#include "drop.h"

#define IPV4_CSUM_OFF (IPV4_HDR_OFF + offsetof(struct iphdr, check))
#define IPV4_TTL_OFF (IPV4_HDR_OFF + offsetof(struct iphdr, ttl))

/* Set the TTL, fixing the header checksum. Returns 0 or a drop reason. */
static __always_inline int ipv4_ttl_store(struct __sk_buff *skb, const struct iphdr *ip4, __u8 ttl)
{
	struct iphdr new_hdr = *ip4;
	__be16 old_word, new_word;

	new_hdr.ttl = ttl;
	/* ttl and protocol share one 16-bit checksum word */
	__builtin_memcpy(&old_word, &ip4->ttl, sizeof(old_word));
	__builtin_memcpy(&new_word, &new_hdr.ttl, sizeof(new_word));
	if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, old_word, new_word, sizeof(__u16)) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV4_TTL_OFF, &ttl, sizeof(ttl), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* Returns 0 or a drop reason. The caller checked ttl > 1. */
static __always_inline int ipv4_ttl_dec(struct __sk_buff *skb, const struct iphdr *ip4)
{
	return ipv4_ttl_store(skb, ip4, ip4->ttl - 1);
}

#endif
