/* ARP responder: the container's requests for any IPv4 address but its own are answered
 * with the host veth's MAC.
 */
#ifndef PYCILIUM_ARP_H
#define PYCILIUM_ARP_H

#include "eth.h"

struct arp_eth {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

static __always_inline int arp_check4(const struct endpoint_info *ep, const struct arp_eth *arp)
{
	if (arp->hrd != bpf_htons(ARPHRD_ETHER) || arp->pro != bpf_htons(ETH_P_IP) ||
	    arp->hln != ETH_ALEN || arp->pln != 4)
		return DROP_INVALID_ARP;
	if (!eth_addr_equals(arp->sha, ep->mac))
		return DROP_INVALID_SMAC;
	if (!ep->ipv4 || arp->sip != ep->ipv4)
		return DROP_INVALID_SIP4;
	return 0;
}

/* Answer a request, pass replies and announcements to the stack, drop spoofed ones. */
static __always_inline int arp_answer4(struct __sk_buff *skb, const struct endpoint_info *ep,
				       const struct pkt_ctx *ctx)
{
	struct arp_eth req, reply;
	int ret;

	if (bpf_skb_load_bytes(skb, ETH_HLEN_, &req, sizeof(req)) < 0)
		return DROP_INVALID_PACKET;
	ret = arp_check4(ep, &req);
	if (ret < 0)
		return ret;
	if (req.op != bpf_htons(ARPOP_REQUEST) || req.tip == ep->ipv4)
		return trace_exit(ctx, TRACE_TO_STACK, TC_ACT_OK);

	reply = req;
	reply.op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(reply.sha, ep->node_mac, ETH_ALEN);
	reply.sip = req.tip;
	__builtin_memcpy(reply.tha, req.sha, ETH_ALEN);
	reply.tip = req.sip;
	if (bpf_skb_store_bytes(skb, ETH_HLEN_, &reply, sizeof(reply), 0) < 0)
		return DROP_WRITE_FAILED;
	return eth_reply(skb, ep, ctx);
}

#endif
