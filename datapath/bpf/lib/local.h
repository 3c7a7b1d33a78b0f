/* Local delivery: traffic to another endpoint on this node goes straight to it, never
 * through the host routing stack.
 *
 * A packet from a local endpoint goes straight into the destination container's namespace
 * (bpf_redirect_peer: the peer of its host veth), skipping that veth's egress hook, where
 * to_container runs, and the backlog queue the veth would take it through. from_container
 * has then run the destination's ingress pipeline in to_container's place (lxc.h,
 * lxc_local_ingress), with ctx turned to the destination's view so that its conntrack,
 * policy, events and reverse NAT are exactly to_container's. The kernel allows a peer
 * redirect from tc ingress only, to a veth whose peer is in another namespace than the
 * caller's: from_container is on tc ingress, and every endpoint's peer is in its container.
 * to_container still guards everything else (the stack, the tunnel, other devices).
 */
#ifndef PYCILIUM_LOCAL_H
#define PYCILIUM_LOCAL_H

#include "eth.h"
#include "ipv4.h"
#include "ipv6.h"

/* The fields in which one packet's two views, the source endpoint's (egress) and the
 * destination endpoint's (ingress), differ. */
struct local_view {
	__u32 ifindex;
	__u32 src_identity;
	__u16 endpoint_id;
	__u16 rev_nat_index;
	__u8 direction;
};

static __always_inline void local_view_swap(struct pkt_ctx *ctx, struct local_view *other)
{
	struct local_view mine = {
		.ifindex = ctx->ifindex,
		.src_identity = ctx->src_identity,
		.endpoint_id = ctx->endpoint_id,
		.rev_nat_index = ctx->rev_nat_index,
		.direction = ctx->direction,
	};

	ctx->ifindex = other->ifindex;
	ctx->src_identity = other->src_identity;
	ctx->endpoint_id = other->endpoint_id;
	ctx->rev_nat_index = other->rev_nat_index;
	ctx->direction = other->direction;
	*other = mine;
}

/* MACs as if routed by the host, then into the destination container. source NULL: out of
 * the destination's host veth, whose to_container does the rest. Else straight into its
 * namespace, ctx being the destination's view and source the sender's, which the one
 * verdict of the run (TRACE_TO_LXC) is counted in: to_container never runs, so
 * TRACE_TO_CONTAINER counts only what came through the stack or the tunnel. */
/* A drop after the destination's view was taken is the sender's: back to its view. */
static __always_inline int local_fail(struct pkt_ctx *ctx, struct local_view *source, int ret)
{
	if (source)
		local_view_swap(ctx, source);
	return ret;
}

static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct pkt_ctx *ctx,
						struct local_view *source)
{
	__u32 ifindex = ctx->dst_ifindex;
	int ret = eth_store_macs(skb, ctx->dst_mac, ctx->dst_node_mac);

	if (ret < 0)
		return local_fail(ctx, source, ret);
	if (!source)
		return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect(ifindex, 0));
	local_view_swap(ctx, source);
	return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect_peer(ifindex, 0));
}

/* Whether the packet goes to the local endpoint owning its destination (as translated in
 * ctx). A hop limit that would reach 0 is left to the stack, which sends the ICMPv6 error. */
static __always_inline int local_delivers6(const struct ipv6hdr *ip6, const struct pkt_ctx *ctx)
{
	return ctx->dst_ifindex && ip6->hop_limit > 1;
}

static __always_inline int local_delivers4(const struct iphdr *ip4, const struct pkt_ctx *ctx)
{
	return ctx->dst_ifindex && ip4->ttl > 1;
}

/* After local_delivers6(): as routed, then to the endpoint (see redirect_to_endpoint). */
static __always_inline int redirect_local6(struct __sk_buff *skb, const struct ipv6hdr *ip6,
					   struct pkt_ctx *ctx, struct local_view *source)
{
	int ret = ipv6_hoplimit_dec(skb, ip6);

	if (ret < 0)
		return local_fail(ctx, source, ret);
	return redirect_to_endpoint(skb, ctx, source);
}

static __always_inline int redirect_local4(struct __sk_buff *skb, const struct iphdr *ip4,
					   struct pkt_ctx *ctx, struct local_view *source)
{
	int ret = ipv4_ttl_dec(skb, ip4);

	if (ret < 0)
		return local_fail(ctx, source, ret);
	return redirect_to_endpoint(skb, ctx, source);
}

#endif
