/* Local delivery: traffic to another endpoint on this node goes straight to its host veth,
 * never through the host routing stack.
 */
#ifndef PYCILIUM_LOCAL_H
#define PYCILIUM_LOCAL_H

#include "eth.h"
#include "ipv4.h"
#include "ipv6.h"

/* MACs as if routed by the host, then out of the destination's host veth into its container. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, const struct pkt_ctx *ctx)
{
	int ret = eth_store_macs(skb, ctx->dst_mac, ctx->dst_node_mac);

	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect(ctx->dst_ifindex, 0));
}

/* Redirect to the local endpoint owning the destination (as translated in ctx), or
 * CTX_CONTINUE. A hop limit that would reach 0 is left to the stack, which sends the
 * ICMPv6 error.
 */
static __always_inline int redirect_local6(struct __sk_buff *skb, const struct ipv6hdr *ip6,
					   const struct pkt_ctx *ctx)
{
	int ret;

	if (!ctx->dst_ifindex || ip6->hop_limit <= 1)
		return CTX_CONTINUE;
	ret = ipv6_hoplimit_dec(skb, ip6);
	if (ret < 0)
		return ret;
	return redirect_to_endpoint(skb, ctx);
}

static __always_inline int redirect_local4(struct __sk_buff *skb, const struct iphdr *ip4,
					   const struct pkt_ctx *ctx)
{
	int ret;

	if (!ctx->dst_ifindex || ip4->ttl <= 1)
		return CTX_CONTINUE;
	ret = ipv4_ttl_dec(skb, ip4);
	if (ret < 0)
		return ret;
	return redirect_to_endpoint(skb, ctx);
}

#endif
