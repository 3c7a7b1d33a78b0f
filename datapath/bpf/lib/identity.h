/* Security identity of a peer address: a local endpoint's own identity, else the
 * longest CIDR prefix the control plane put in the cidr tries (the host's addresses
 * are there as /32 and /128), else world. A NAT64 address has its IPv4 address's.
 */
#ifndef PYCILIUM_IDENTITY_H
#define PYCILIUM_IDENTITY_H

#include "maps.h"
#include "nat64_addr.h"

/* addr in the form of an endpoint_key (a NAT64 address as its IPv4 one, see nat64_addr.h). */
static __always_inline __u32 identity_of_cidr(const union v6addr *addr, __u8 family)
{
	__u32 *identity;

	if (family == ENDPOINT_KEY_IPV6) {
		struct cidr6_key key = { .prefixlen = 128, .addr = *addr };

		identity = cidr6_lookup(&key);
	} else {
		struct cidr4_key key = { .prefixlen = 32, .addr = addr->p[0] };

		identity = cidr4_lookup(&key);
	}
	return identity ? *identity : IDENTITY_WORLD;
}

static __always_inline __u32 identity_lookup(const union v6addr *addr, __u8 family)
{
	struct endpoint_key key;
	struct endpoint_addr *owner;
	struct endpoint_info *ep;

	nat64_addr_key(&key, addr, family);
	owner = endpoint_addr_lookup(&key);
	if (owner) {
		ep = endpoint_lookup(owner->ifindex);
		if (ep)
			return ep->identity;
	}
	return identity_of_cidr(&key.ip, key.family);
}

/* ctx's destination identity and, for a local endpoint, where a redirect delivers to (not
 * for a NAT64 address: that packet is translated and routed); for an endpoint of another
 * node, that node. */
static __always_inline void identity_of_destination(struct pkt_ctx *ctx)
{
	struct endpoint_key key;
	struct endpoint_addr *owner;
	struct endpoint_info *ep;
	struct ipcache_entry *remote;

	nat64_addr_key(&key, &ctx->flow.daddr, ctx->flow.family);
	owner = endpoint_addr_lookup(&key);
	ep = owner ? endpoint_lookup(owner->ifindex) : NULL;
	ctx->dst_nat64_side = 0;
	ctx->tunnel_node = 0;
	if (!owner || !ep) {
		ctx->dst_ifindex = 0;
		/* An endpoint of another node (not as a NAT64 address: that is translated here
		 * and routed) is reached through the tunnel. */
		remote = key.family == ctx->flow.family ? ipcache_lookup(&key) : NULL;
		if (remote) {
			ctx->dst_identity = remote->identity;
			ctx->tunnel_node = remote->node;
			return;
		}
		ctx->dst_identity = identity_of_cidr(&key.ip, key.family);
		return;
	}
	ctx->dst_identity = ep->identity;
	if (key.family != ctx->flow.family) {
		ctx->dst_ifindex = 0;
		ctx->dst_nat64_side = 1;
		return;
	}
	ctx->dst_ifindex = owner->ifindex;
	__builtin_memcpy(ctx->dst_mac, ep->mac, ETH_ALEN);
	__builtin_memcpy(ctx->dst_node_mac, ep->node_mac, ETH_ALEN);
}

#endif
