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

/* Decapsulated (by the device, or by vxlan_decap) from a node's packet (the caller checked
 * the sender before it parsed ctx->flow, so that anything from elsewhere counts as an
 * unknown sender): to the local endpoint of the destination, with the sender's identity
 * from the VNI; to the stack if the destination is the host's own (a reply to the host,
 * whose remote peer's node has the host's address in its ipcache). Returns a TC verdict or
 * a drop reason. */
static __always_inline int overlay_deliver(struct __sk_buff *skb, struct pkt_ctx *ctx, __u32 vni)
{
	struct endpoint_key addr = {};
	struct endpoint_addr *owner;
	struct endpoint_info *ep;
	int ret;

	ctx->src_identity = vni;
	/* Only a node's from_netdev adds the option, and it sends as world: a container could
	 * put the option on its own packets (CAP_NET_RAW) and plant DSR state for any flow. */
	if (vni == IDENTITY_WORLD) {
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
	skb->mark = MARK_IDENTITY | (vni & TUNNEL_ID_MAX);
	ret = eth_store_macs(skb, ep->mac, ep->node_mac);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_LXC, bpf_redirect(owner->ifindex, 0));
}

/* from_overlay: what the device decapsulated, with the VNI and the outer source from its
 * metadata. Returns a TC verdict or a drop reason. */
static __always_inline int overlay_ingress(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct bpf_tunnel_key key = {};
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return DROP_TUNNEL_NO_KEY;
	ret = tunnel_check_sender(key.remote_ipv4);
	if (ret < 0)
		return ret;
	ret = tunnel_parse(skb, &ctx->flow);
	if (ret < 0)
		return ret;
	return overlay_deliver(skb, ctx, key.tunnel_id);
}

/* Decapsulation on the underlay device (from_netdev), so that a local endpoint's bulk
 * TCP skips the VXLAN device: it allocates a metadata dst for every packet it receives
 * and frees it through RCU, which costs a cross-host stream about a tenth of its
 * throughput (docs/benchmarks.md). Only GSO packets are taken: decapsulating every packet
 * here measured a third fewer request/response transactions across hosts (16,000 against
 * 23,000 a second, bench/crosshost.py, 2026-12-06), for reasons not found yet. What is
 * not taken here goes on to the device untouched, where from_overlay delivers it.
 */
#define VXLAN_PORT 8472		   /* datapath/netlink.py's VXLAN_PORT */
#define VXLAN_FLAGS_VNI 0x08000000 /* the I flag alone, as the device sends */
#define ECN_MASK 0x03		   /* of the IPv4 TOS byte */
#define ECN_CE 0x03		   /* congestion experienced */
/* Not in this bcc's headers; the kernel has them since 6.3 (include/uapi/linux/bpf.h). */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

/* What is stripped: outer IPv4, UDP, VXLAN and the inner Ethernet header (the outer one
 * stays, with the inner ethertype). */
struct vxlan_outer4 {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
	__be16 len;
	__be16 check;
	__be32 flags;
	__be32 vni;
	__u8 inner_macs[2 * ETH_ALEN];
	__be16 inner_proto;
} __attribute__((packed));

/* The inner IP header, read once: what decides the decapsulation, then the flow. */
union vxlan_inner_ip {
	struct ipv6hdr v6;
	struct iphdr v4;
};

/* The inner IP header at off into ip, with its destination and upper-layer protocol (the
 * next header after the fixed IPv6 header). Returns 0, or -1 for anything else than IPv6
 * or IPv4 with a whole header. */
static __always_inline int vxlan_inner(struct __sk_buff *skb, __u32 off, __be16 proto,
				       union vxlan_inner_ip *ip, struct endpoint_key *dst, __u8 *l4)
{
	if (proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, off, &ip->v6, sizeof(ip->v6)) < 0)
			return -1;
		__builtin_memcpy(&dst->ip, &ip->v6.daddr, sizeof(dst->ip));
		dst->family = ENDPOINT_KEY_IPV6;
		*l4 = ip->v6.nexthdr;
		return 0;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, off, &ip->v4, sizeof(ip->v4)) < 0 || ip->v4.ihl < 5)
			return -1;
		dst->ip.p[0] = ip->v4.daddr;
		dst->family = ENDPOINT_KEY_IPV4;
		*l4 = ip->v4.protocol;
		return 0;
	}
	return -1;
}

/* A VXLAN GSO packet (one a sender's GSO or the underlay's GRO made) to this node (an
 * unfragmented IPv4 header without options and a valid checksum, UDP port VXLAN_PORT
 * without a checksum, as nodes send, the I flag, a VNI) carrying TCP for a local endpoint:
 * stripped to the inner packet and delivered as from_overlay delivers it. TCP only:
 * bpf_skb_adjust_room keeps SKB_GSO_UDP_TUNNEL and skb->encapsulation on it (6.18 has no
 * flag to clear them), which breaks the inner UDP's segmentation but not TCP's, whose
 * inner headers still match; with FIXED_GSO the MSS stays the inner one. An inner checksum
 * a NIC vouched for is verified again (adjust_room resets CHECKSUM_UNNECESSARY).
 * CTX_CONTINUE for anything else (and when adjust_room refuses). Returns a TC verdict, a
 * drop reason or CTX_CONTINUE. */
static __always_inline int vxlan_decap(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct endpoint_key inner = {};
	union vxlan_inner_ip ip;
	struct vxlan_outer4 hdr;
	union v6addr daddr = {};
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	__u32 vni;
	__u8 l4;
	int ret;

	/* What the stack would drop or take elsewhere stays its own: another's MAC seen in
	 * promiscuous mode, a VLAN's frame (its device has its own rules). */
	if (!skb->gso_size || skb->protocol != bpf_htons(ETH_P_IP) ||
	    skb->pkt_type != PACKET_HOST || skb->vlan_present)
		return CTX_CONTINUE;
	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &hdr, sizeof(hdr)) < 0)
		return CTX_CONTINUE;
	if (hdr.ip.ihl != 5 || hdr.ip.protocol != IPPROTO_UDP ||
	    hdr.ip.frag_off & bpf_htons(IPV4_FRAG_MASK) || hdr.dport != bpf_htons(VXLAN_PORT) ||
	    hdr.check || hdr.flags != bpf_htonl(VXLAN_FLAGS_VNI) || hdr.vni & bpf_htonl(0xff))
		return CTX_CONTINUE;
	/* The device carries a congestion mark over to the inner header (RFC 6040); here it
	 * would be lost. */
	if ((hdr.ip.tos & ECN_MASK) == ECN_CE)
		return CTX_CONTINUE;
	vni = bpf_ntohl(hdr.vni) >> 8;
	if (vni == IDENTITY_ANY)
		return CTX_CONTINUE;
	if (dsr_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&hdr.ip, sizeof(hdr.ip), 0)))
		return CTX_CONTINUE;
	daddr.p[0] = hdr.ip.daddr;
	if (identity_of_cidr(&daddr, ENDPOINT_KEY_IPV4) != IDENTITY_HOST)
		return CTX_CONTINUE;
	if (vxlan_inner(skb, IPV4_HDR_OFF + sizeof(hdr), hdr.inner_proto, &ip, &inner, &l4) < 0)
		return CTX_CONTINUE;
	if (!endpoint_addr_lookup(&inner))
		return CTX_CONTINUE;
	if (l4 != IPPROTO_TCP)
		return CTX_CONTINUE;
	ret = tunnel_check_sender(bpf_ntohl(hdr.ip.saddr));
	if (ret < 0)
		return ret;
	flags |= inner.family == ENDPOINT_KEY_IPV6 ? ADJ_ROOM_DECAP_L3_IPV6 : ADJ_ROOM_DECAP_L3_IPV4;
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(hdr), BPF_ADJ_ROOM_MAC, flags) < 0)
		return CTX_CONTINUE;
	if (bpf_skb_store_bytes(skb, 2 * ETH_ALEN, &hdr.inner_proto, sizeof(hdr.inner_proto), 0) < 0)
		return DROP_WRITE_FAILED;
	/* The inner IP header now starts where the outer one did. */
	ret = inner.family == ENDPOINT_KEY_IPV6 ? flow_parse6(skb, &ip.v6, &ctx->flow) :
						 flow_parse4(skb, &ip.v4, &ctx->flow);
	if (ret < 0)
		return ret;
	return overlay_deliver(skb, ctx, vni);
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
