/* Neighbour discovery responder: the container's neighbour solicitations for anything
 * but itself (its router, other endpoints it believes on-link) are answered with the
 * host veth's MAC, so that all its traffic comes to the host.
 *
 * NDisc is exempt from identity and policy, so only real NDisc is: hop limit 255 (RFC 4861),
 * which no forwarded packet has, and from a container nothing a router or another
 * address's owner would send.
 */
#ifndef PYCILIUM_NDISC_H
#define PYCILIUM_NDISC_H

#include "eth.h"
#include "ipv6.h"

#define NDISC_ROUTER_ADVERTISEMENT 134
#define NDISC_NEIGHBOUR_SOLICITATION 135
#define NDISC_NEIGHBOUR_ADVERTISEMENT 136
#define NDISC_REDIRECT 137
#define NDISC_OPT_TARGET_LL_ADDR 2
#define NDISC_NA_FLAGS bpf_htonl(0xe0000000)	/* router, solicited, override */
#define NDISC_HOP_LIMIT 255

/* A neighbour advertisement with a target link-layer address option. */
struct ndisc_na {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be32 flags;
	union v6addr target;
	__u8 opt_type;
	__u8 opt_len;		/* in units of 8 bytes */
	__u8 opt_mac[ETH_ALEN];
};

#define NDISC_NA_FRAME_LEN (IPV6_L4_OFF + sizeof(struct ndisc_na))

/* Turn the solicitation in skb into the advertisement for target, sent back to the container. */
static __always_inline int ndisc_send_na6(struct __sk_buff *skb, const struct endpoint_info *ep,
					  const union v6addr *target, const union v6addr *daddr,
					  const struct pkt_ctx *ctx)
{
	struct ndisc_na na = {};
	struct ipv6hdr ip6 = {};
	__s64 sum;

	ip6.version = 6;
	ip6.payload_len = bpf_htons(sizeof(na));
	ip6.nexthdr = IPPROTO_ICMPV6;
	ip6.hop_limit = NDISC_HOP_LIMIT;
	__builtin_memcpy(&ip6.saddr, target, sizeof(*target));
	__builtin_memcpy(&ip6.daddr, daddr, sizeof(*daddr));

	na.type = NDISC_NEIGHBOUR_ADVERTISEMENT;
	na.flags = NDISC_NA_FLAGS;
	na.target = *target;
	na.opt_type = NDISC_OPT_TARGET_LL_ADDR;
	na.opt_len = 1;
	__builtin_memcpy(na.opt_mac, ep->node_mac, ETH_ALEN);

	sum = ipv6_pseudo_csum(target, daddr, sizeof(na), IPPROTO_ICMPV6);
	if (sum < 0)
		return DROP_WRITE_FAILED;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&na, sizeof(na), sum);
	if (sum < 0)
		return DROP_WRITE_FAILED;
	na.csum = csum_fold32(sum);

	if (skb->len != NDISC_NA_FRAME_LEN &&
	    bpf_skb_change_tail(skb, NDISC_NA_FRAME_LEN, 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IPV6_L4_OFF, &na, sizeof(na), 0) < 0)
		return DROP_WRITE_FAILED;
	return eth_reply(skb, ep, ctx);
}

/* Returns 0 for NDisc from a neighbour, else DROP_NDISC_HOP_LIMIT: a container could
 * otherwise send data past policy in NDisc-typed messages the host forwards.
 */
static __always_inline int ndisc_from_neighbour(const struct ipv6hdr *ip6)
{
	return ip6->hop_limit == NDISC_HOP_LIMIT ? 0 : DROP_NDISC_HOP_LIMIT;
}

/* NDisc the container may send: from a neighbour, no router advertisement or redirect (it
 * is no router), advertisements only for its own or a link-local address. Returns 0 or a
 * drop reason.
 */
static __always_inline int ndisc_check_egress6(struct __sk_buff *skb,
					       const struct endpoint_info *ep,
					       const struct ipv6hdr *ip6, const struct flow *f)
{
	struct icmp6hdr icmp6;
	union v6addr target;
	int ret = ndisc_from_neighbour(ip6);

	if (ret < 0)
		return ret;
	if (bpf_skb_load_bytes(skb, f->l4_off, &icmp6, sizeof(icmp6)) < 0)
		return DROP_INVALID_PACKET;
	if (icmp6.icmp6_type == NDISC_ROUTER_ADVERTISEMENT || icmp6.icmp6_type == NDISC_REDIRECT)
		return DROP_NDISC_ROUTER;
	if (icmp6.icmp6_type != NDISC_NEIGHBOUR_ADVERTISEMENT)
		return 0;
	if (bpf_skb_load_bytes(skb, f->l4_off + sizeof(icmp6), &target, sizeof(target)) < 0)
		return DROP_INVALID_PACKET;
	if (!ipv6_addr_equals(&target, &ep->ipv6) && !ipv6_addr_is_linklocal(&target))
		return DROP_NDISC_TARGET;
	return 0;
}

/* Answer a neighbour solicitation from the container, or CTX_CONTINUE if it is not one
 * we answer: DAD (source ::), a target that is the container's own or link-local.
 */
static __always_inline int ndisc_answer6(struct __sk_buff *skb, const struct endpoint_info *ep,
					 const struct ipv6hdr *ip6, const struct pkt_ctx *ctx)
{
	const union v6addr *saddr = (const union v6addr *)&ip6->saddr;
	struct icmp6hdr icmp6;
	union v6addr target;

	if (bpf_skb_load_bytes(skb, IPV6_L4_OFF, &icmp6, sizeof(icmp6)) < 0)
		return DROP_INVALID_PACKET;
	if (icmp6.icmp6_type != NDISC_NEIGHBOUR_SOLICITATION || icmp6.icmp6_code != 0)
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, IPV6_L4_OFF + sizeof(icmp6), &target, sizeof(target)) < 0)
		return DROP_INVALID_PACKET;
	if (ipv6_addr_is_unspec(saddr) || ipv6_addr_is_linklocal(&target) ||
	    ipv6_addr_equals(&target, &ep->ipv6))
		return CTX_CONTINUE;
	return ndisc_send_na6(skb, ep, &target, saddr, ctx);
}

#endif
