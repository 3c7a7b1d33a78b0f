/* NAT46: an IPv4 client beyond the endpoints (the host, or the world through it) reaches
 * IPv6-only endpoints through an IPv4 service frontend whose backend slots hold the
 * backends' NAT64 sides (their IPv4 addresses, lib/nat64.h).
 *
 * The host routes the VIP to the NAT64 side of one backend (datapath.py), so the packet
 * meets that backend's to-container hook. There the flow's backend is picked as lb_select
 * picks for a container client, under endpoint id 0 (no endpoint has it), so whichever
 * backend's hook sees a packet of the flow makes the same pick. A packet for another
 * backend goes on, unchanged, to that backend's veth; one for this backend has its
 * destination rewritten to the NAT64 side, and nat64_to6 makes it IPv6 from
 * NAT64_PREFIX::client: ingress policy sees the client's IPv4 identity. The conntrack entry
 * keeps the service, so the reply leaves from the frontend (nat46_rev_nat).
 *
 * A container client needs none of this: its from-container hook translates the VIP to
 * the NAT64 side like any IPv4 backend, and its own to-container hook reverses it.
 */
#ifndef PYCILIUM_NAT46_H
#define PYCILIUM_NAT46_H

#include "eth.h"
#include "lb.h"
#include "nat64.h"

#define NAT46_PICKER 0	/* endpoint id of the lb_flows entries of NAT46 picks */

/* The local IPv6-only endpoint whose NAT64 side is addr, and its veth; NULL if none. */
static __always_inline struct endpoint_info *nat46_backend(__be32 addr, __u32 *ifindex)
{
	struct endpoint_key key = { .family = ENDPOINT_KEY_IPV4 };
	struct endpoint_addr *owner;
	struct endpoint_info *ep;

	key.ip.p[0] = addr;
	owner = endpoint_addr_lookup(&key);
	if (!owner)
		return NULL;
	ep = endpoint_lookup(owner->ifindex);
	if (!ep || !(ep->flags & EP_F_NAT64) || ep->ipv4 != addr)
		return NULL;
	*ifindex = owner->ifindex;
	return ep;
}

/* The reply of a NAT46 flow, translated to IPv4 from ep's NAT64 side: from the frontend
 * instead. ctx->flow is the reply as IPv6. Returns 0 or a drop reason.
 */
static __always_inline int nat46_rev_nat(struct __sk_buff *skb, const struct endpoint_info *ep,
					 const struct pkt_ctx *ctx)
{
	struct flow reply4 = {
		.family = ENDPOINT_KEY_IPV4,
		.sport = ctx->flow.sport,
		.protocol = ctx->flow.protocol == IPPROTO_ICMPV6 ? IPPROTO_ICMP : ctx->flow.protocol,
		.l4_off = ICMP4_L4_OFF,
	};
	struct lb_addr *frontend = lb_revnat_lookup(ctx->rev_nat_index);
	struct lb_addr front;

	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	reply4.saddr.p[0] = ep->ipv4;
	return nat_rewrite(skb, &reply4, NAT_SRC, &front.addr, front.port);
}

#define NAT46_QUOTE_OFF (ICMP4_L4_OFF + sizeof(struct icmphdr))

/* The flow's backend, at backend_addr (a NAT64 side), is another endpoint: its veth gets the
 * packet as it is, and its own hook translates it. Returns that TC verdict, CTX_CONTINUE when
 * the backend is the endpoint of this veth, or a drop reason.
 */
static __always_inline int nat46_pass_to_backend(struct __sk_buff *skb, struct pkt_ctx *ctx,
						 __be32 backend_addr)
{
	struct endpoint_info *backend;
	__u32 ifindex = 0;
	int ret;

	backend = nat46_backend(backend_addr, &ifindex);
	if (!backend)
		return DROP_NO_SERVICE_BACKEND;
	if (ifindex == skb->ifindex)
		return CTX_CONTINUE;
	ret = eth_store_macs(skb, backend->mac, backend->node_mac);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect(ifindex, 0));
}

/* An ICMP error for the frontend (a router's "fragmentation needed" on the way to the
 * client) about a NAT46 flow's reply: for the flow's backend, as an error for its NAT64
 * side quoting what that side sent. Sent on to the backend's veth, or rewritten for ep
 * (CTX_CONTINUE: nat64_to6 translates it further). Returns a verdict, CTX_CONTINUE or a
 * drop reason.
 */
static __always_inline int nat46_error_in(struct __sk_buff *skb, const struct endpoint_info *ep,
					  struct pkt_ctx *ctx)
{
	struct flow forward = { .family = ENDPOINT_KEY_IPV4 };
	struct nat64_quote4 quote;
	struct ct_key key = {};
	struct lb_flow *pick;
	struct lb_flow chosen;
	int ret;

	if (ctx->flow.l4_off != ICMP4_L4_OFF ||
	    bpf_skb_load_bytes(skb, NAT46_QUOTE_OFF, &quote, sizeof(quote)) < 0)
		return DROP_NAT64_UNSUPPORTED;
	if (quote.ip4.ihl != 5 ||
	    (quote.ip4.protocol != IPPROTO_TCP && quote.ip4.protocol != IPPROTO_UDP))
		return DROP_NAT64_UNSUPPORTED;
	/* The quoted packet is a reply, frontend -> client: its flow is client -> frontend. */
	forward.saddr.p[0] = quote.ip4.daddr;
	forward.daddr.p[0] = quote.ip4.saddr;
	forward.sport = quote.l4[2] << 8 | quote.l4[3];
	forward.dport = quote.l4[0] << 8 | quote.l4[1];
	forward.protocol = quote.ip4.protocol;
	ct_key_fill(&key, &forward, NAT46_PICKER, DIR_EGRESS, 0);
	pick = lb_flow_lookup(&key);
	if (!pick || pick->lifetime < ct_now())
		return DROP_NAT46_NO_SERVICE;
	chosen = *pick;
	ret = nat46_pass_to_backend(skb, ctx, chosen.backend.p[0]);
	if (ret != CTX_CONTINUE)
		return ret;
	ret = lb_quote4_store(skb, ICMP4_L4_OFF, &quote, NAT_SRC, ep->ipv4, chosen.backend_port);
	if (ret < 0)
		return ret;
	ret = nat_store_addr(skb, &ctx->flow, NAT_DST, &chosen.backend);
	return ret < 0 ? ret : CTX_CONTINUE;
}

/* An IPv4 packet on the veth of IPv6-only endpoint ep: for its NAT64 side, CTX_CONTINUE; to
 * a frontend, sent on to the flow's backend (a TC verdict) or, when that is ep, rewritten to
 * ep's NAT64 side with ctx->rev_nat_index the service (CTX_CONTINUE). Else a drop reason.
 */
static __always_inline int nat46_service(struct __sk_buff *skb, const struct endpoint_info *ep,
					 struct pkt_ctx *ctx)
{
	struct lb_flow chosen = {};
	struct lb_service *svc;
	struct iphdr ip4;
	int ret;

	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
		return DROP_INVALID_PACKET;
	if (ip4.daddr == ep->ipv4)
		return CTX_CONTINUE;
	ret = flow_parse4(skb, &ip4, &ctx->flow);
	if (ret < 0)
		return ret;
	if (ctx->flow.icmp == FLOW_ICMP_ERROR)
		return nat46_error_in(skb, ep, ctx);
	svc = lb_balances(&ctx->flow) ? lb_service_find(&ctx->flow) : NULL;
	if (!svc)
		return DROP_NAT46_NO_SERVICE;
	ret = lb_select(&ctx->flow, NAT46_PICKER, svc, &chosen);
	if (ret < 0)
		return ret;
	ret = nat46_pass_to_backend(skb, ctx, chosen.backend.p[0]);
	if (ret != CTX_CONTINUE)
		return ret;
	ret = nat_rewrite(skb, &ctx->flow, NAT_DST, &chosen.backend, chosen.backend_port);
	if (ret < 0)
		return ret;
	ctx->rev_nat_index = svc->id;
	ctx->nat46 = 1;
	return CTX_CONTINUE;
}

/* An ICMP error of ep as nat64_to4 left it (from the NAT64 side, quoting client -> NAT64
 * side): when the quoted flow came through a NAT46 service (ct_lookup_related took its
 * entry's service into ctx), from the frontend and quoting client -> frontend, so that it
 * reaches the client's socket. Returns 0 when rewritten, CTX_CONTINUE for an error about
 * another flow, or a drop reason.
 */
static __always_inline int nat46_error_rev_nat(struct __sk_buff *skb,
					       const struct endpoint_info *ep,
					       const struct pkt_ctx *ctx)
{
	struct flow outer = { .family = ENDPOINT_KEY_IPV4, .protocol = IPPROTO_ICMP };
	struct nat64_quote4 quote;
	struct lb_addr *frontend;
	struct lb_addr front;
	int ret;

	if (!ctx->rev_nat_index)
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, NAT46_QUOTE_OFF, &quote, sizeof(quote)) < 0)
		return DROP_INVALID_PACKET;
	frontend = lb_revnat_lookup(ctx->rev_nat_index);
	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	ret = lb_quote4_store(skb, ICMP4_L4_OFF, &quote, NAT_DST, front.addr.p[0], front.port);
	if (ret < 0)
		return ret;
	outer.saddr.p[0] = ep->ipv4;
	return nat_store_addr(skb, &outer, NAT_SRC, &front.addr);
}

#endif
