/* Traffic from an endpoint to an address beyond the host (neither the host's own nor a
 * local endpoint's nor another node's endpoint's, which the tunnel reaches): masqueraded
 * by netfilter when the endpoint's network asks for it (this only marks the packet),
 * refused for the endpoint of an internal network.
 */
#ifndef PYCILIUM_OUTBOUND_H
#define PYCILIUM_OUTBOUND_H

#include "drop.h"

/* Multicast is not routed beyond the host here (MLD reports, mDNS): neither translated
 * nor counted as an internal network's drop. */
static __always_inline int outbound_multicast(const struct flow *f)
{
	if (f->family == ENDPOINT_KEY_IPV6)
		return f->daddr.addr[0] == 0xff;
	return (f->daddr.addr[0] & 0xf0) == 0xe0;
}

static __always_inline int outbound_beyond_host(const struct pkt_ctx *ctx)
{
	return !ctx->dst_ifindex && !ctx->dst_nat64_side && !ctx->tunnel_node &&
	       ctx->dst_identity != IDENTITY_HOST && !outbound_multicast(&ctx->flow);
}

/* Before policy, so that a refused flow leaves no conntrack entry. Returns 0 or a drop reason. */
static __always_inline int outbound_check(const struct endpoint_info *ep, const struct pkt_ctx *ctx)
{
	if ((ep->flags & EP_F_INTERNAL) && outbound_beyond_host(ctx))
		return DROP_INTERNAL_NETWORK;
	return 0;
}

/* For a packet passed to the stack: netfilter's nat POSTROUTING rule matches the mark. */
static __always_inline void outbound_mark(struct __sk_buff *skb, const struct endpoint_info *ep,
					  const struct pkt_ctx *ctx)
{
	if ((ep->flags & EP_F_MASQUERADE) && outbound_beyond_host(ctx))
		skb->mark |= MARK_MASQUERADE;
}

#endif
