/* Ethernet helpers. */
#ifndef PYCILIUM_ETH_H
#define PYCILIUM_ETH_H

#include "drop.h"
#include "trace.h"

static __always_inline int eth_addr_equals(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* Rewrite destination and source MAC. Returns 0 or a drop reason. */
static __always_inline int eth_store_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* Send the (rewritten) packet back out of the veth it came in on: into the container. */
static __always_inline int eth_reply(struct __sk_buff *skb, const struct endpoint_info *ep,
				     const struct pkt_ctx *ctx)
{
	int ret = eth_store_macs(skb, ep->mac, ep->node_mac);

	if (ret < 0)
		return ret;
	return trace_exit(ctx, TRACE_REPLY, bpf_redirect(skb->ifindex, 0));
}

#endif
