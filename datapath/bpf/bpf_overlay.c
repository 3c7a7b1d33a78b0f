/* Programs attached to the node's VXLAN device (cilium_vxlan, external mode), see
 * lib/tunnel.h.
 *
 * Compiled by datapath/loader.py when the tunnel is first enabled, with the same map file
 * descriptors as bpf_lxc.c. Only entry functions live here.
 */
#include "lib/common.h"
#include "lib/drop.h"
#include "lib/tunnel.h"

/* Device: cilium_vxlan. Direction: from another node. Hook: tc clsact ingress.
 * The VNI is the sender's identity; to the local endpoint (whose to_container enforces
 * ingress policy on it) or to the host.
 */
int from_overlay(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = { .ifindex = skb->ifindex, .direction = DIR_INGRESS };
	int ret = overlay_ingress(skb, &ctx);

	if (ret < 0)
		return drop_exit(skb, &ctx, ret);
	return ret;
}

/* Device: cilium_vxlan. Direction: to another node. Hook: tc clsact egress.
 * The tunnel key of what the host stack routed into the device.
 */
int to_overlay(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = { .ifindex = skb->ifindex, .direction = DIR_EGRESS };
	int ret = overlay_egress(skb, &ctx);

	if (ret < 0)
		return drop_exit(skb, &ctx, ret);
	return ret;
}

/* Device: the node's underlay device(s), those carrying its address. Direction: from the
 * network. Hook: tc clsact ingress. Another node's VXLAN packet for a local endpoint,
 * decapsulated and delivered here, past the VXLAN device (vxlan_decap); a published port
 * whose container lives on another node, straight into the tunnel with direct server
 * return (lib/dsr.h); the rest to the stack.
 */
int from_netdev(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = { .ifindex = skb->ifindex, .direction = DIR_INGRESS };
	int ret = vxlan_decap(skb, &ctx);

	if (ret == CTX_CONTINUE)
		ret = nodeport_dsr4(skb, &ctx);
	if (ret == CTX_CONTINUE)
		return TC_ACT_OK;
	if (ret < 0)
		return drop_exit(skb, &ctx, ret);
	return ret;
}
