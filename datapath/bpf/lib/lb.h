/* Service load balancing on the from-container hook, before conntrack and policy.
 *
 * A packet to a frontend (VIP, port, protocol; else the VIP's L3-only frontend) has its
 * destination rewritten to a backend slot picked by a hash of its flow. The pick is kept
 * in lb_flows under the client's tuple, so every packet of a flow reaches the same backend
 * whatever happens to the slots later. Conntrack and policy then see the backend: its
 * address, its identity, its ingress policy. The client's egress conntrack entry carries
 * the service id, and the reply's source is rewritten back to the frontend at the
 * client's to-container hook (lb_rev_nat).
 *
 * Hairpin: a client that is a backend of the VIP it calls gets its own packet with the
 * VIP as source, since Linux drops packets arriving from its own address. Its reply,
 * addressed to the VIP, is recognised by conntrack before any service lookup and goes
 * straight back in as frontend -> client.
 *
 * VIPs come only from the service ranges (the loader passes them as SERVICE6_W0..3 and
 * SERVICE6_M0..3, SERVICE4_W and SERVICE4_M: address and mask words), so a packet to any
 * other destination, most of them, costs neither service lookup nor hairpin lookup.
 */
#ifndef PYCILIUM_LB_H
#define PYCILIUM_LB_H

#include "conntrack.h"
#include "identity.h"
#include "nat.h"

#define LB_HASH_MUL 0x9e3779b1U	/* 2^32 / golden ratio */

#ifndef SERVICE4_W		/* the loader's service_range_flags(): the ranges are the driver's */
#error "SERVICE6_W0..3, SERVICE6_M0..3, SERVICE4_W and SERVICE4_M must be defined"
#endif

static __always_inline int lb_in_service_range(const struct flow *f)
{
	const union v6addr *a = &f->daddr;

	if (f->family == ENDPOINT_KEY_IPV4)
		return (a->p[0] & bpf_htonl(SERVICE4_M)) == bpf_htonl(SERVICE4_W);
	return (a->p[0] & bpf_htonl(SERVICE6_M0)) == bpf_htonl(SERVICE6_W0) &&
	       (a->p[1] & bpf_htonl(SERVICE6_M1)) == bpf_htonl(SERVICE6_W1) &&
	       (a->p[2] & bpf_htonl(SERVICE6_M2)) == bpf_htonl(SERVICE6_W2) &&
	       (a->p[3] & bpf_htonl(SERVICE6_M3)) == bpf_htonl(SERVICE6_W3);
}

/* TCP, UDP and echo requests are balanced; anything else to a VIP goes on untouched. */
static __always_inline int lb_balances(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP ||
	       f->icmp == FLOW_ICMP_ECHO_REQUEST;
}

/* The service of the packet's destination: the L4 frontend, else the L3-only one. */
static __always_inline struct lb_service *lb_service_find(const struct flow *f)
{
	struct lb_key key = { .addr = f->daddr, .family = f->family };
	struct lb_service *svc;

	if (!lb_in_service_range(f))
		return NULL;
	if (f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP) {
		key.port = f->dport;
		key.protocol = f->protocol;
		svc = lb_service_lookup(&key);
		if (svc)
			return svc;
		key.port = 0;
		key.protocol = 0;
	}
	return lb_service_lookup(&key);
}

static __always_inline __u32 lb_mix(__u32 hash, __u32 word)
{
	hash = (hash ^ word) * LB_HASH_MUL;
	return hash ^ (hash >> 15);
}

/* A hash of the 5-tuple: the same for every packet of a flow, spread over flows. */
static __always_inline __u32 lb_flow_hash(const struct flow *f)
{
	__u32 hash = f->protocol;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		hash = lb_mix(hash, f->saddr.p[i]);
		hash = lb_mix(hash, f->daddr.p[i]);
	}
	hash = lb_mix(hash, (__u32)f->sport << 16 | f->dport);
	return hash ^ (hash >> 16);
}

/* Expiry of a flow's pick, as conntrack would set it after this packet. */
static __always_inline __u32 lb_flow_expiry(const struct flow *f, __u32 now)
{
	__u16 flags = 0;

	if (f->protocol == IPPROTO_TCP && !tcp_is_syn(f))
		flags |= CT_F_SEEN_REPLY;
	if (tcp_is_closing(f))
		flags |= CT_F_TX_CLOSING;
	return now + ct_lifetime(f->protocol, flags);
}

/* The flow's backend: the one it was given (kept under picker, the client endpoint's id),
 * else a slot picked by its hash (a TCP SYN always picks: a reused tuple is a new
 * connection). Returns 0 or a drop reason.
 */
static __always_inline int lb_select(const struct flow *f, __u16 picker,
				     const struct lb_service *svc, struct lb_flow *out)
{
	struct lb_slot_key slot = { .service_id = svc->id };
	struct ct_key key = {};
	struct lb_flow *known;
	struct lb_addr *backend;
	__u32 now = ct_now();

	ct_key_fill(&key, f, picker, DIR_EGRESS, 0);
	known = lb_flow_lookup(&key);
	if (known && known->lifetime >= now && known->service_id == svc->id && !tcp_is_syn(f)) {
		known->lifetime = lb_flow_expiry(f, now);
		*out = *known;
		return 0;
	}
	if (!svc->count)
		return DROP_NO_SERVICE_BACKEND;
	slot.slot = lb_flow_hash(f) % svc->count;
	backend = lb_slot_lookup(&slot);
	if (!backend)
		return DROP_NO_SERVICE_BACKEND;
	out->backend = backend->addr;
	out->backend_port = backend->port;
	out->service_id = svc->id;
	out->lifetime = lb_flow_expiry(f, now);
	lb_flow_update(&key, out);
	return 0;
}

static __always_inline int lb_is_self(const struct endpoint_info *ep, const struct flow *f,
				      const union v6addr *addr)
{
	if (f->family == ENDPOINT_KEY_IPV6)
		return ipv6_addr_equals(addr, &ep->ipv6);
	return ep->ipv4 && addr->p[0] == ep->ipv4;
}

/* A packet to a frontend goes to its flow's backend (and, hairpinned, comes from the
 * VIP). ctx then holds the translated flow, the backend's identity and the service id.
 * Returns 0 or a drop reason.
 */
static __always_inline int lb_translate(struct __sk_buff *skb, const struct endpoint_info *ep,
					struct pkt_ctx *ctx)
{
	struct lb_flow chosen = {};
	struct lb_service *svc;
	union v6addr vip;
	int ret;

	if (!lb_balances(&ctx->flow))
		return 0;
	svc = lb_service_find(&ctx->flow);
	if (!svc)
		return 0;
	ret = lb_select(&ctx->flow, ctx->endpoint_id, svc, &chosen);
	if (ret < 0)
		return ret;
	vip = ctx->flow.daddr;
	ret = nat_rewrite(skb, &ctx->flow, NAT_DST, &chosen.backend, chosen.backend_port);
	if (ret < 0)
		return ret;
	ctx->rev_nat_index = chosen.service_id;
	identity_of_destination(ctx);
	if (!lb_is_self(ep, &ctx->flow, &ctx->flow.daddr))
		return 0;
	ctx->loopback = 1;
	return nat_store_addr(skb, &ctx->flow, NAT_SRC, &vip);
}

/* The reply of a hairpinned flow (this endpoint, as backend, to the VIP it saw as the
 * source) becomes frontend -> client, the client being this endpoint too. Returns 0 when
 * translated, CTX_CONTINUE if the packet is no such reply, or a drop reason.
 */
static __always_inline int lb_loopback_reply(struct __sk_buff *skb, const struct endpoint_info *ep,
					     struct pkt_ctx *ctx)
{
	struct ct_entry *entry;
	struct lb_addr *frontend;
	struct lb_addr front;
	union v6addr self = {};
	__u32 now;
	int ret;

	if (ctx->flow.protocol != IPPROTO_TCP && ctx->flow.protocol != IPPROTO_UDP &&
	    ctx->flow.icmp != FLOW_ICMP_ECHO_REPLY)
		return CTX_CONTINUE;
	if (!lb_in_service_range(&ctx->flow))	/* the reply goes to the VIP */
		return CTX_CONTINUE;
	now = ct_now();
	entry = ct_find(&ctx->flow, ctx->endpoint_id, DIR_EGRESS, 1, now);
	if (!entry || !(entry->flags & CT_F_LOOPBACK))
		return CTX_CONTINUE;
	frontend = lb_revnat_lookup(entry->rev_nat_index);
	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	ct_refresh(entry, ctx, skb->len, 1, now);
	if (ctx->flow.family == ENDPOINT_KEY_IPV6)
		self = ep->ipv6;
	else
		self.p[0] = ep->ipv4;
	ctx->loopback = 1;
	ret = nat_rewrite(skb, &ctx->flow, NAT_SRC, &front.addr, front.port);
	if (ret < 0)
		return ret;
	ret = nat_store_addr(skb, &ctx->flow, NAT_DST, &self);
	if (ret < 0)
		return ret;
	identity_of_destination(ctx);
	return 0;
}

/* Into a client: a reply of a load-balanced flow comes from the frontend it called (a
 * NAT46 flow into its backend is no reply). Returns 0 or a drop reason.
 */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct lb_addr *frontend;
	struct lb_addr front;

	if (!ctx->rev_nat_index || ctx->nat46)
		return 0;
	frontend = lb_revnat_lookup(ctx->rev_nat_index);
	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	return nat_rewrite(skb, &ctx->flow, NAT_SRC, &front.addr, front.port);
}

#endif
