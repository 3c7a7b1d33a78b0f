/* Between hosts: VXLAN through the node's one external-mode device (cilium_vxlan, made by
 * datapath/tunnel.py). The VNI of every packet carries its sender's security identity, so
 * the receiving node enforces ingress policy on it without a lookup of the source address.
 *
 * Out: from_container redirects a packet for another node's endpoint (the ipcache says
 * which node) into the device with the tunnel key set (redirect_tunnel*); to_overlay, on the
 * device's egress, keys what the host stack routed there itself (host or world identity).
 * In: from_overlay, on the device's ingress, redirects to the local endpoint with the
 * identity in skb->mark (MARK_IDENTITY), which to_container trusts (tunnel_source_identity).
 */
#ifndef PYCILIUM_TUNNEL_H
#define PYCILIUM_TUNNEL_H

#include "dsr.h"
#include "eth.h"
#include "flow.h"
#include "identity.h"
#include "ipv4.h"
#include "ipv6.h"

/* The source identity to_container enforces ingress policy on: the one from_overlay carried
 * in the mark, else the identity of the source address. */
static __always_inline __u32 tunnel_source_identity(const struct __sk_buff *skb,
						    const struct pkt_ctx *ctx)
{
	if ((skb->mark & MARK_IDENTITY_MASK) == MARK_IDENTITY)
		return skb->mark & TUNNEL_ID_MAX;
	return identity_lookup(&ctx->flow.saddr, ctx->flow.family);
}

/* Encapsulate to node (the outer UDP checksum left zero, as VXLAN over IPv4 allows), the
 * VNI being identity. Returns 0 or a drop reason. */
static __always_inline int tunnel_set_key(struct __sk_buff *skb, __be32 node, __u32 identity)
{
	struct bpf_tunnel_key key = {};

	if (identity > TUNNEL_ID_MAX)
		return DROP_TUNNEL_IDENTITY;
	key.tunnel_id = identity;
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* Into the tunnel to ctx->tunnel_node, as if routed by the host: the MACs are the host
 * veth's (the receiving node rewrites them for its endpoint). */
static __always_inline int tunnel_redirect(struct __sk_buff *skb, const struct endpoint_info *ep,
					   const struct pkt_ctx *ctx)
{
	__u32 ifindex = tunnel_ifindex();
	int ret;

	if (!ifindex)
		return DROP_NO_TUNNEL;
	ret = tunnel_set_key(skb, ctx->tunnel_node, ctx->src_identity);
	if (ret < 0)
		return ret;
	ret = eth_store_macs(skb, ep->node_mac, ep->node_mac);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_OVERLAY, bpf_redirect(ifindex, 0));
}

/* Redirect a packet for another node's endpoint into the tunnel, or CTX_CONTINUE. As for
 * local delivery, a hop limit that would reach 0 is left to the stack. */
static __always_inline int redirect_tunnel6(struct __sk_buff *skb, const struct endpoint_info *ep,
					    const struct ipv6hdr *ip6, const struct pkt_ctx *ctx)
{
	int ret;

	if (!ctx->tunnel_node || ip6->hop_limit <= 1)
		return CTX_CONTINUE;
	ret = ipv6_hoplimit_dec(skb, ip6);
	if (ret < 0)
		return ret;
	return tunnel_redirect(skb, ep, ctx);
}

static __always_inline int redirect_tunnel4(struct __sk_buff *skb, const struct endpoint_info *ep,
					    const struct iphdr *ip4, const struct pkt_ctx *ctx)
{
	int ret;

	if (!ctx->tunnel_node || ip4->ttl <= 1)
		return CTX_CONTINUE;
	ret = ipv4_ttl_dec(skb, ip4);
	if (ret < 0)
		return ret;
	return tunnel_redirect(skb, ep, ctx);
}

/* The flow of a packet on the tunnel device, both families. Returns 0 or a drop reason. */
static __always_inline int tunnel_parse(struct __sk_buff *skb, struct flow *f)
{
	struct ipv6hdr ip6;
	struct iphdr ip4;

	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6)) < 0)
			return DROP_INVALID_PACKET;
		return flow_parse6(skb, &ip6, f);
	}
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
			return DROP_INVALID_PACKET;
		return flow_parse4(skb, &ip4, f);
	}
	return DROP_UNKNOWN_L3;
}

/* The VNI is an identity that policy here trusts, so only a node of the cluster may send
 * one: the outer source must be a node's address, which set_remote_node puts into the
 * ipcache as living on itself. remote_ipv4 is in host byte order. Returns 0 or a drop
 * reason. */
static __always_inline int tunnel_check_sender(__u32 remote_ipv4)
{
	struct endpoint_key key = { .family = ENDPOINT_KEY_IPV4 };
	struct ipcache_entry *node;

	key.ip.p[0] = bpf_htonl(remote_ipv4);
	node = ipcache_lookup(&key);
	if (!node || node->node != key.ip.p[0])
		return DROP_TUNNEL_UNKNOWN_SENDER;
	return 0;
}

/* Decapsulated by the device: to the local endpoint of the destination, with the sender's
 * identity from the VNI; to the stack if the destination is the host's own (a reply to
 * the host, whose remote peer's node has the host's address in its ipcache). Returns a
 * TC verdict or a drop reason. */
static __always_inline int overlay_ingress(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_key addr = {};
	struct endpoint_addr *owner;
	struct endpoint_info *ep;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return DROP_TUNNEL_NO_KEY;
	ret = tunnel_check_sender(key.remote_ipv4);
	if (ret < 0)
		return ret;
	ctx->src_identity = key.tunnel_id;
	ret = tunnel_parse(skb, &ctx->flow);
	if (ret < 0)
		return ret;
	/* Only a node's from_netdev adds the option, and it sends as world: a container could
	 * put the option on its own packets (CAP_NET_RAW) and plant DSR state for any flow. */
	if (key.tunnel_id == IDENTITY_WORLD) {
		ret = dsr_take_option4(skb, ctx);
		if (ret < 0)
			return ret;
	}
	addr.ip = ctx->flow.daddr;
	addr.family = ctx->flow.family;
	owner = endpoint_addr_lookup(&addr);
	ep = owner ? endpoint_lookup(owner->ifindex) : NULL;
	if (!ep) {
		ctx->dst_identity = identity_of_cidr(&addr.ip, addr.family);
		if (ctx->dst_identity != IDENTITY_HOST)
			return DROP_TUNNEL_DESTINATION;
		/* The inner destination MAC is the sender's device's: not ours. */
		if (bpf_skb_change_type(skb, PACKET_HOST) < 0)
			return DROP_WRITE_FAILED;
		return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
	}
	ctx->endpoint_id = ep->endpoint_id;
	ctx->dst_identity = ep->identity;
	skb->mark = MARK_IDENTITY | (key.tunnel_id & TUNNEL_ID_MAX);
	ret = eth_store_macs(skb, ep->mac, ep->node_mac);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect(owner->ifindex, 0));
}

/* Routed into the device by the host stack (the host's own packets, forwarded ones): the
 * key of the destination's node, the VNI host for the host's own packets and world for
 * the rest. A packet from_container keyed already passes. Returns a TC verdict or a drop
 * reason. */
static __always_inline int overlay_egress(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_key addr = {};
	struct ipcache_entry *remote;
	__u32 source;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return TC_ACT_OK;
	ret = tunnel_parse(skb, &ctx->flow);
	if (ret < 0)
		return ret;
	addr.ip = ctx->flow.daddr;
	addr.family = ctx->flow.family;
	remote = ipcache_lookup(&addr);
	if (!remote)
		return DROP_TUNNEL_NO_NODE;
	source = identity_of_cidr(&ctx->flow.saddr, ctx->flow.family);
	ctx->src_identity = source == IDENTITY_HOST && !skb->ingress_ifindex ? IDENTITY_HOST :
									     IDENTITY_WORLD;
	ctx->dst_identity = remote->identity;
	ret = tunnel_set_key(skb, remote->node, ctx->src_identity);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_OVERLAY, TC_ACT_OK);
}

/* from_netdev: a published port of this node whose container lives on another node goes
 * into the tunnel translated, with the option on a flow's first packet. CTX_CONTINUE for
 * anything else (netfilter's DNAT serves the local containers). Returns a TC verdict, a
 * drop reason or CTX_CONTINUE. */
static __always_inline int nodeport_dsr4(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct nodeport_key key = {};
	struct endpoint_key addr = {};
	struct ipcache_entry *remote;
	struct addr4_port *backend;
	union v6addr to = {};
	__be32 frontend;
	__u16 port;
	struct iphdr ip4;
	__u32 ifindex;
	int ret;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl != 5)
		return CTX_CONTINUE;
	if (ip4.protocol != IPPROTO_TCP && ip4.protocol != IPPROTO_UDP)
		return CTX_CONTINUE;
	if (flow_parse4(skb, &ip4, &ctx->flow) < 0)
		return CTX_CONTINUE;
	key.addr = ip4.daddr;
	key.port = ctx->flow.dport;
	key.protocol = ip4.protocol;
	backend = nodeport4_lookup(&key);
	if (!backend) {
		key.addr = 0;
		backend = nodeport4_lookup(&key);
		if (!backend || identity_of_cidr(&ctx->flow.daddr, ENDPOINT_KEY_IPV4) != IDENTITY_HOST)
			return CTX_CONTINUE;
	}
	addr.ip.p[0] = backend->addr;
	addr.family = ENDPOINT_KEY_IPV4;
	remote = ipcache_lookup(&addr);
	if (!remote || ip4.ttl <= 1)
		return CTX_CONTINUE;
	ifindex = tunnel_ifindex();
	if (!ifindex)
		return DROP_NO_TUNNEL;
	frontend = ip4.daddr;
	port = ctx->flow.dport;
	to.p[0] = backend->addr;
	ctx->src_identity = IDENTITY_WORLD;
	ctx->dst_identity = remote->identity;
	ret = ipv4_ttl_dec(skb, &ip4);
	if (ret < 0)
		return ret;
	ret = nat_rewrite(skb, &ctx->flow, NAT_DST, &to, backend->port);
	if (ret < 0)
		return ret;
	if (dsr_carries_option(&ctx->flow)) {
		/* the header as rewritten: TTL, destination, checksum */
		if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0)
			return DROP_INVALID_PACKET;
		ret = dsr_add_option4(skb, &ip4, frontend, port);
		if (ret < 0)
			return ret;
	}
	ret = tunnel_set_key(skb, remote->node, IDENTITY_WORLD);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_OVERLAY, bpf_redirect(ifindex, 0));
}

#endif
