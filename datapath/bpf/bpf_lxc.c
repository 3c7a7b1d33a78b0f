/* Programs attached to an endpoint's host-side veth ("lxc..." in the host namespace).
 *
 * Compiled once per driver process by datapath/loader.py; the map file descriptors come
 * in as -D*_MAP_FD (see lib/maps.h). Only entry functions live here.
 */
#include "lib/common.h"
#include "lib/drop.h"
#include "lib/lxc.h"

/* Device: host-side veth. Direction: from the container. Hook: tc clsact ingress.
 * Anti-spoofing, NDisc/ARP/echo responders, service translation, conntrack and egress policy,
 * then a local endpoint or the stack.
 */
int from_container(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = { .ifindex = skb->ifindex, .direction = DIR_EGRESS };
	struct endpoint_info *ep = endpoint_lookup(skb->ifindex);
	int ret;

	if (!ep)
		return drop_exit(skb, &ctx, DROP_UNKNOWN_ENDPOINT);
	ctx.endpoint_id = ep->endpoint_id;
	ret = lxc_egress(skb, ep, &ctx);
	if (ret < 0)
		return drop_exit(skb, &ctx, ret);
	return ret;
}

/* Device: host-side veth. Direction: to the container. Hook: tc clsact egress.
 * Ingress policy, for packets from the stack and from local endpoints' redirects alike; the
 * source of a service reply back to the frontend the client called.
 */
int to_container(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = { .ifindex = skb->ifindex, .direction = DIR_INGRESS };
	struct endpoint_info *ep = endpoint_lookup(skb->ifindex);
	int ret;

	if (!ep)
		return drop_exit(skb, &ctx, DROP_UNKNOWN_ENDPOINT);
	ctx.endpoint_id = ep->endpoint_id;
	ret = lxc_ingress(skb, ep, &ctx);
	if (ret < 0)
		return drop_exit(skb, &ctx, ret);
	return ret;
}
