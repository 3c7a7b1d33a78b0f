/* Services across hosts with direct server return (IPv4).
 *
 * The node a client outside the cluster asks (its published port, nodeport4) translates the
 * destination to the container on another node in from_netdev, on its underlay device's tc
 * ingress, before netfilter: its conntrack would see only one direction of the flow and
 * refuse the rest. The first packet of a flow (a TCP SYN; every UDP datagram, which has no
 * handshake) carries the frontend in an IPv4 option (Cilium's: type 0x9a, 8 bytes: port,
 * address) inside the tunnel. The container's node records it in dsr4 and strips the option
 * in from_overlay; from_container gives the replies the frontend as their source and hands
 * them to its own stack, towards the client: the first node never sees a reply.
 * nodeport_dsr4 (from_netdev) is in tunnel.h, beside the other ways into the tunnel.
 */
#ifndef PYCILIUM_DSR_H
#define PYCILIUM_DSR_H

#include "conntrack.h"
#include "flow.h"
#include "identity.h"
#include "ipv4.h"
#include "nat.h"
#include "trace.h"

#define DSR_OPT_TYPE 0x9a /* copied, class 0, number 26 */

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

struct ip4_dsr_hdr {
	struct iphdr ip;
	struct dsr_opt4 opt;
};

static __always_inline __sum16 dsr_csum_fold(__s64 sum)
{
	__u32 folded = (__u32)sum;

	folded = (folded & 0xffff) + (folded >> 16);
	folded = (folded & 0xffff) + (folded >> 16);
	return (__sum16)~folded;
}

/* Whether this packet of the flow carries the option: TCP's first, every UDP datagram. */
static __always_inline int dsr_carries_option(const struct flow *f)
{
	return f->protocol == IPPROTO_UDP || tcp_is_syn(f);
}

/* Insert the option after the 20-byte header ip4 (as loaded). Returns 0 or a drop reason. */
static __always_inline int dsr_add_option4(struct __sk_buff *skb, const struct iphdr *ip4,
					   __be32 addr, __u16 port)
{
	struct ip4_dsr_hdr hdr = { .ip = *ip4 };

	hdr.ip.ihl = sizeof(hdr) / 4;
	hdr.ip.tot_len = bpf_htons(bpf_ntohs(ip4->tot_len) + sizeof(hdr.opt));
	hdr.ip.check = 0;
	hdr.opt.type = DSR_OPT_TYPE;
	hdr.opt.len = sizeof(hdr.opt);
	hdr.opt.port = bpf_htons(port);
	hdr.opt.addr = addr;
	hdr.ip.check = dsr_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&hdr, sizeof(hdr), 0));
	if (bpf_skb_adjust_room(skb, sizeof(hdr.opt), BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV4_HDR_OFF, &hdr, sizeof(hdr), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* from_overlay, on the container's node: a packet with the option has it recorded for its
 * flow and taken out. Returns 0 or a drop reason. */
static __always_inline int dsr_take_option4(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct ip4_dsr_hdr hdr;
	struct addr4_port frontend = {};
	struct dsr_key key = {};

	if (ctx->flow.family != ENDPOINT_KEY_IPV4)
		return 0;
	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &hdr.ip, sizeof(hdr.ip)) < 0)
		return DROP_INVALID_PACKET;
	if (hdr.ip.ihl != sizeof(hdr) / 4)
		return 0;
	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &hdr, sizeof(hdr)) < 0)
		return DROP_INVALID_PACKET;
	if (hdr.opt.type != DSR_OPT_TYPE || hdr.opt.len != sizeof(hdr.opt))
		return 0;
	key.saddr = hdr.ip.saddr;
	key.daddr = hdr.ip.daddr;
	key.sport = ctx->flow.sport;
	key.dport = ctx->flow.dport;
	key.protocol = ctx->flow.protocol;
	frontend.addr = hdr.opt.addr;
	frontend.port = bpf_ntohs(hdr.opt.port);
	if (dsr4_update(&key, &frontend) < 0)
		return DROP_WRITE_FAILED;
	hdr.ip.ihl = sizeof(hdr.ip) / 4;
	hdr.ip.tot_len = bpf_htons(bpf_ntohs(hdr.ip.tot_len) - sizeof(hdr.opt));
	hdr.ip.check = 0;
	hdr.ip.check = dsr_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&hdr.ip, sizeof(hdr.ip), 0));
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(hdr.opt), BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV4_HDR_OFF, &hdr.ip, sizeof(hdr.ip), 0) < 0)
		return DROP_WRITE_FAILED;
	ctx->flow.l4_off -= sizeof(hdr.opt);
	return 0;
}

/* from_container: a reply of a flow that came with the option leaves from the frontend,
 * to the host stack (towards the client, not masqueraded). CTX_CONTINUE for any other
 * packet. Returns a TC verdict, a drop reason or CTX_CONTINUE. */
static __always_inline int dsr_reply4(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct dsr_key key = {};
	struct addr4_port *frontend;
	union v6addr from = {};
	int ret;

	if (ctx->flow.protocol != IPPROTO_TCP && ctx->flow.protocol != IPPROTO_UDP)
		return CTX_CONTINUE;
	key.saddr = ctx->flow.daddr.p[0];
	key.daddr = ctx->flow.saddr.p[0];
	key.sport = ctx->flow.dport;
	key.dport = ctx->flow.sport;
	key.protocol = ctx->flow.protocol;
	frontend = dsr4_lookup(&key);
	if (!frontend)
		return CTX_CONTINUE;
	from.p[0] = frontend->addr;
	ret = nat_rewrite(skb, &ctx->flow, NAT_SRC, &from, frontend->port);
	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);
}

#endif
