/* L3/L4 policy: one hash lookup per candidate key, most specific first. Consulted for
 * new flows only; conntrack lets their replies and related ICMP errors through.
 */
#ifndef PYCILIUM_POLICY_H
#define PYCILIUM_POLICY_H

#include "conntrack.h"
#include "flowlog.h"

static __always_inline struct policy_entry *policy_try(struct policy_key *key, __u32 identity,
						       __u16 dport, __u8 protocol)
{
	key->identity = identity;
	key->dport = dport;
	key->protocol = protocol;
	return policy_lookup(key);
}

/* The entry admitting the packet: (identity, port, proto), (identity, proto),
 * (identity), then the same with any identity. NULL if none; *match says which.
 */
static __always_inline struct policy_entry *policy_match(const struct pkt_ctx *ctx, __u32 peer,
							 enum policy_match *match)
{
	struct policy_key key = { .endpoint_id = ctx->endpoint_id, .direction = ctx->direction };
	__u16 dport = flow_policy_port(&ctx->flow);
	__u8 proto = ctx->flow.protocol;
	struct policy_entry *entry;

	*match = POLICY_MATCH_PEER_PORT;
	entry = policy_try(&key, peer, dport, proto);
	if (!entry) {
		*match = POLICY_MATCH_PEER_PROTO;
		entry = policy_try(&key, peer, 0, proto);
	}
	if (!entry) {
		*match = POLICY_MATCH_PEER;
		entry = policy_try(&key, peer, 0, 0);
	}
	if (!entry) {
		*match = POLICY_MATCH_ANY_PORT;
		entry = policy_try(&key, IDENTITY_ANY, dport, proto);
	}
	if (!entry) {
		*match = POLICY_MATCH_ANY_PROTO;
		entry = policy_try(&key, IDENTITY_ANY, 0, proto);
	}
	if (!entry) {
		*match = POLICY_MATCH_ANY;
		entry = policy_try(&key, IDENTITY_ANY, 0, 0);
	}
	return entry;
}

/* Returns 0 if the endpoint's policy admits the packet, else DROP_POLICY. */
static __always_inline int policy_can_access(struct __sk_buff *skb, const struct pkt_ctx *ctx,
					     enum policy_match *match)
{
	__u32 peer = ctx->direction == DIR_INGRESS ? ctx->src_identity : ctx->dst_identity;
	struct policy_entry *entry = policy_match(ctx, peer, match);

	if (!entry)
		return DROP_POLICY;
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, skb->len);
	return 0;
}

static __always_inline int policy_enforced(const struct endpoint_info *ep, __u8 direction)
{
	__u16 flag = direction == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED;

	return ep->flags & flag;
}

/* Policy for a flow conntrack does not know, then track and log it. Returns 0 or a drop
 * reason. An endpoint reaching itself through a service (hairpin) is not subject to its
 * policy.
 */
static __always_inline int policy_new_flow(struct __sk_buff *skb, const struct endpoint_info *ep,
					   struct pkt_ctx *ctx)
{
	enum policy_match match = POLICY_MATCH_NONE;
	int ret;

	if (policy_enforced(ep, ctx->direction) && !ctx->loopback) {
		ret = policy_can_access(skb, ctx, &match);
		if (ret < 0)
			return ret;
	}
	ct_create(skb, ctx);
	/* Untracked packets (ICMP errors, other ICMP) would be a record each. */
	if (ct_tracks(&ctx->flow))
		flow_log_new(ctx, match);
	return 0;
}

/* Conntrack, then policy_new_flow for a new flow. Returns 0 or a drop reason. */
static __always_inline int policy_check(struct __sk_buff *skb, const struct endpoint_info *ep,
					struct pkt_ctx *ctx)
{
	int ret = ct_lookup(skb, ctx);

	if (ret != CT_NEW)
		return ret < 0 ? ret : 0;
	return policy_new_flow(skb, ep, ctx);
}

#endif
