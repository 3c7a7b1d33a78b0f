/* What happens to a packet leaving a container (from_container) and to one going into it
 * (to_container), per protocol. NDisc and ARP are never subject to identity or policy;
 * neither are the answers the datapath itself sends back into the container.
 */
#ifndef PYCILIUM_LXC_H
#define PYCILIUM_LXC_H

#include "arp.h"
#include "icmp4.h"
#include "icmp6.h"
#include "identity.h"
#include "lb.h"
#include "local.h"
#include "nat46.h"
#include "nat64.h"
#include "ndisc.h"
#include "outbound.h"
#include "policy.h"
#include "spoof.h"
#include "tunnel.h"

/* Identities of both ends, as seen from ep in ctx->direction (into it: the identity the
 * tunnel carried, for a packet from another node). */
static __always_inline void lxc_identify(const struct __sk_buff *skb,
					 const struct endpoint_info *ep, struct pkt_ctx *ctx)
{
	if (ctx->direction == DIR_EGRESS) {
		ctx->src_identity = ep->identity;
		identity_of_destination(ctx);
	} else {
		ctx->src_identity = tunnel_source_identity(skb, ctx);
		ctx->dst_identity = ep->identity;
	}
}

/* An endpoint waiting for its identity sends and receives nothing but NDisc and ARP. */
static __always_inline int lxc_identify_or_wait(const struct __sk_buff *skb,
						const struct endpoint_info *ep,
						struct pkt_ctx *ctx)
{
	lxc_identify(skb, ep, ctx);
	return ep->identity == IDENTITY_INIT ? DROP_WAITING_FOR_IDENTITY : 0;
}

/* Services, the internal network's boundary, conntrack and egress policy, for both
 * families. A hairpinned flow's reply is already accounted for by its conntrack entry and
 * heads straight back in. Returns 0 or a drop reason.
 */
static __always_inline int lxc_egress_flow(struct __sk_buff *skb, const struct endpoint_info *ep,
					   struct pkt_ctx *ctx)
{
	int ret = lb_loopback_reply(skb, ep, ctx);

	if (ret != CTX_CONTINUE)
		return ret;
	ret = lb_translate(skb, ep, ctx);
	if (ret < 0)
		return ret;
	ret = outbound_check(ep, ctx);
	if (ret < 0)
		return ret;
	return policy_check(skb, ep, ctx);
}

/* The host's identity (always admitted) belongs to packets the host itself sent, which
 * came in on no device. One of its addresses on a packet it forwards is forged or
 * masqueraded: the world's, for policy.
 */
static __always_inline void lxc_host_only_from_host(const struct __sk_buff *skb,
						    struct pkt_ctx *ctx)
{
	if (ctx->src_identity == IDENTITY_HOST && skb->ingress_ifindex)
		ctx->src_identity = IDENTITY_WORLD;
}

/* The destination's ingress pipeline for a packet from ep to another local endpoint (see
 * local.h), as to_container runs it on a packet from a local endpoint: the waiting
 * identity, conntrack, policy and flow event, a service reply's reverse NAT. ctx becomes
 * the destination's view, *source the sender's. Returns 0 (straight into the
 * destination's namespace), CTX_CONTINUE (through its veth: an IPv6-only endpoint's
 * to_container translates IPv4 first) or a drop reason, ctx being the destination's view.
 * to_container's other checks cannot fail here: the source address is ep's own
 * (spoof_check), neither forged nor the host's; a hairpin (ep reaching itself through a
 * service) passes unchecked there too.
 */
static __always_inline int lxc_local_ingress(struct __sk_buff *skb, const struct endpoint_info *ep,
					     struct pkt_ctx *ctx, struct local_view *source)
{
	struct endpoint_info *dst = endpoint_lookup(ctx->dst_ifindex);
	int hairpin = ctx->dst_ifindex == ctx->ifindex;
	int ret;

	if (!dst)
		return DROP_UNKNOWN_ENDPOINT;
	if ((dst->flags & EP_F_NAT64) && ctx->flow.family == ENDPOINT_KEY_IPV4)
		return CTX_CONTINUE;
	source->ifindex = ctx->dst_ifindex;
	source->endpoint_id = dst->endpoint_id;
	source->rev_nat_index = 0;
	source->direction = DIR_INGRESS;
	source->src_identity = ctx->src_identity;
	/* ICMPv6 may come from a link-local address, whose identity is not the sender's; one of
	 * the host's, sent from a container, is no host. */
	if (ctx->flow.family == ENDPOINT_KEY_IPV6 &&
	    !ipv6_addr_equals(&ctx->flow.saddr, &ep->ipv6))
		source->src_identity = identity_lookup(&ctx->flow.saddr, ctx->flow.family);
	local_view_swap(ctx, source);
	lxc_host_only_from_host(skb, ctx);
	if (hairpin)
		return 0;
	if (dst->identity == IDENTITY_INIT)
		return DROP_WAITING_FOR_IDENTITY;
	ret = policy_check(skb, dst, ctx);
	if (ret < 0)
		return ret;
	return lb_rev_nat(skb, ctx);
}

static __always_inline int lxc_egress6(struct __sk_buff *skb, const struct endpoint_info *ep,
				       struct pkt_ctx *ctx)
{
	struct local_view source;
	struct ipv6hdr ip6;
	int nat64, ret;

	if (bpf_skb_load_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6)) < 0)
		return DROP_INVALID_PACKET;
	ret = flow_parse6(skb, &ip6, &ctx->flow);
	if (ret < 0)
		return ret;
	ret = spoof_check6(ep, &ip6, ctx->flow.protocol);
	if (ret < 0)
		return ret;
	if (ctx->flow.icmp == FLOW_ICMP_NDISC) {
		ret = ndisc_check_egress6(skb, ep, &ip6, &ctx->flow);
		if (ret < 0)
			return ret;
		if (ip6.nexthdr == IPPROTO_ICMPV6) {
			ret = ndisc_answer6(skb, ep, &ip6, ctx);
			if (ret != CTX_CONTINUE)
				return ret;
		}
		return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
	}
	ret = lxc_identify_or_wait(skb, ep, ctx);
	if (ret < 0)
		return ret;
	if (ip6.nexthdr == IPPROTO_ICMPV6) {
		ret = icmp6_echo_reply(skb, ep, &ip6, ctx);
		if (ret != CTX_CONTINUE)
			return ret;
	}
	nat64 = nat64_egress_applies(ep, &ctx->flow);
	if (nat64) {
		ret = nat64_egress_check(ep, &ctx->flow);
		if (ret < 0)
			return ret;
	}
	ret = lxc_egress_flow(skb, ep, ctx);
	if (ret < 0)
		return ret;
	if (nat64) {
		ret = nat64_to4(skb, ep, &ip6, &ctx->flow);
		if (ret < 0)
			return ret;
		/* Only the reply of a NAT46 flow, or an error about it, has a service here: it
		 * leaves from the frontend, to a client that needs no masquerade. */
		if (ctx->flow.icmp == FLOW_ICMP_ERROR)
			ret = nat46_error_rev_nat(skb, ep, ctx);
		else if (ctx->rev_nat_index)
			ret = nat46_rev_nat(skb, ep, ctx);
		else
			ret = CTX_CONTINUE;
		if (ret < 0)
			return ret;
		if (ret == CTX_CONTINUE)
			outbound_mark(skb, ep, ctx);
		return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
	}
	if (local_delivers6(&ip6, ctx)) {
		ret = lxc_local_ingress(skb, ep, ctx, &source);
		if (ret < 0)
			return ret;
		return redirect_local6(skb, &ip6, ctx, ret == CTX_CONTINUE ? NULL : &source);
	}
	ret = redirect_tunnel6(skb, ep, &ip6, ctx);
	if (ret != CTX_CONTINUE)
		return ret;
	outbound_mark(skb, ep, ctx);
	return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
}

static __always_inline int lxc_egress4(struct __sk_buff *skb, const struct endpoint_info *ep,
				       struct pkt_ctx *ctx)
{
	struct local_view source;
	struct iphdr ip4;
	int ret;

	if (ep->flags & EP_F_NAT64)
		return DROP_IPV6_ONLY;
	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
		return DROP_INVALID_PACKET;
	ret = flow_parse4(skb, &ip4, &ctx->flow);
	if (ret < 0)
		return ret;
	ret = spoof_check4(ep, ip4.saddr);
	if (ret < 0)
		return ret;
	ret = lxc_identify_or_wait(skb, ep, ctx);
	if (ret < 0)
		return ret;
	ret = icmp4_echo_reply(skb, ep, &ip4, ctx);
	if (ret != CTX_CONTINUE)
		return ret;
	ret = lxc_egress_flow(skb, ep, ctx);
	if (ret < 0)
		return ret;
	ret = dsr_reply4(skb, ctx);
	if (ret != CTX_CONTINUE)
		return ret;
	if (local_delivers4(&ip4, ctx)) {
		ret = lxc_local_ingress(skb, ep, ctx, &source);
		if (ret < 0)
			return ret;
		return redirect_local4(skb, &ip4, ctx, ret == CTX_CONTINUE ? NULL : &source);
	}
	ret = redirect_tunnel4(skb, ep, &ip4, ctx);
	if (ret != CTX_CONTINUE)
		return ret;
	outbound_mark(skb, ep, ctx);
	return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
}

/* From the container: returns a TC verdict or a drop reason. */
static __always_inline int lxc_egress(struct __sk_buff *skb, const struct endpoint_info *ep,
				      struct pkt_ctx *ctx)
{
	int ret = spoof_check_mac(skb, ep);

	if (ret < 0)
		return ret;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lxc_egress6(skb, ep, ctx);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return lxc_egress4(skb, ep, ctx);
	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return arp_answer4(skb, ep, ctx);
	return DROP_UNKNOWN_L3;
}

/* A packet this endpoint sent that came back to it: the datapath's own answers (echo
 * from the router address; the source alone proves nothing, anyone beyond the host can
 * forge it) and hairpinned service flows, whose from-container hook already did
 * conntrack and translation.
 */
static __always_inline int lxc_is_loopback(const struct __sk_buff *skb)
{
	return skb->ingress_ifindex == skb->ifindex;
}

/* Identity comes from the source address, so a local endpoint's address (also as the
 * NAT64 address of its IPv4 one) counts only on packets that came out of that endpoint's
 * veth (directly or through the stack); from anywhere else (beyond the host, a Docker
 * bridge) it is forged. Returns 0 or a drop reason.
 */
static __always_inline int lxc_check_local_source(const struct __sk_buff *skb,
						  const struct flow *f)
{
	struct endpoint_key key;
	struct endpoint_addr *owner;

	nat64_addr_key(&key, &f->saddr, f->family);
	owner = endpoint_addr_lookup(&key);

	if (owner && owner->ifindex != skb->ingress_ifindex)
		return DROP_FORGED_SOURCE;
	return 0;
}

static __always_inline void lxc_identify_source(const struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	ctx->src_identity = tunnel_source_identity(skb, ctx);
	lxc_host_only_from_host(skb, ctx);
}

/* Conntrack and ingress policy. The source's identity (a lookup in two maps, or in the
 * cidr trie) serves only policy, which a new flow alone meets, and the events that carry
 * it: a packet of a known flow skips the lookup unless trace events are on (a drop looks
 * it up then, lxc_ingress). Measured in docs/benchmarks.md (issue 17). Returns 0 or a drop
 * reason.
 */
static __always_inline int lxc_ingress_policy(struct __sk_buff *skb, const struct endpoint_info *ep,
					      struct pkt_ctx *ctx)
{
	int ret;

	if (ep->identity == IDENTITY_INIT)
		return lxc_identify_or_wait(skb, ep, ctx);
	ctx->dst_identity = ep->identity;
	ret = ct_lookup(skb, ctx);
	if (ret < 0)
		return ret;
	if (ret == CT_NEW || (config_flags() & CONFIG_TRACE_EVENTS))
		lxc_identify_source(skb, ctx);
	return ret == CT_NEW ? policy_new_flow(skb, ep, ctx) : 0;
}

static __always_inline int lxc_ingress6(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct ipv6hdr ip6;
	int ret;

	if (bpf_skb_load_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6)) < 0)
		return DROP_INVALID_PACKET;
	ret = flow_parse6(skb, &ip6, &ctx->flow);
	if (ret < 0 || ctx->flow.icmp != FLOW_ICMP_NDISC)
		return ret;
	return ndisc_from_neighbour(&ip6);
}

static __always_inline int lxc_ingress4(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct iphdr ip4;

	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
		return DROP_INVALID_PACKET;
	return flow_parse4(skb, &ip4, &ctx->flow);
}

/* Into the container: returns a TC verdict or a drop reason. */
static __always_inline int lxc_ingress(struct __sk_buff *skb, const struct endpoint_info *ep,
				       struct pkt_ctx *ctx)
{
	int ret;

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return trace_exit(ctx, TRACE_TO_CONTAINER, TC_ACT_OK);
	/* An IPv6-only endpoint's IPv4 address is its NAT64 side: whatever comes to it (also
	 * through a NAT46 service) is translated first, then handled as the IPv6 packet it
	 * became. */
	if (skb->protocol == bpf_htons(ETH_P_IP) && (ep->flags & EP_F_NAT64)) {
		ret = nat46_service(skb, ep, ctx);
		if (ret != CTX_CONTINUE)
			return ret;
		ret = nat64_to6(skb, ep);
		if (ret < 0)
			return ret;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		ret = lxc_ingress6(skb, ctx);
	else if (skb->protocol == bpf_htons(ETH_P_IP))
		ret = lxc_ingress4(skb, ctx);
	else
		return DROP_UNKNOWN_L3;
	if (ret < 0)
		return ret;
	if (ctx->flow.icmp != FLOW_ICMP_NDISC && !lxc_is_loopback(skb)) {
		ret = lxc_check_local_source(skb, &ctx->flow);
		if (ret < 0)
			return ret;
		ret = lxc_ingress_policy(skb, ep, ctx);
		if (ret >= 0)
			ret = lb_rev_nat(skb, ctx);
		if (ret < 0) {
			if (ctx->src_identity == IDENTITY_ANY)	/* the drop event carries it */
				lxc_identify_source(skb, ctx);
			return ret;
		}
	}
	return trace_exit(ctx, TRACE_TO_CONTAINER, TC_ACT_OK);
}

#endif
