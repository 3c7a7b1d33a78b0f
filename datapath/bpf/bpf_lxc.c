/* Programs attached to an endpoint's host-side veth ("lxc..." in the host namespace).
 *
 * Compiled once per driver process by datapath/loader.py; the map file descriptors come
 * in as -D*_MAP_FD (see lib/maps.h). Only entry functions live here.
 */
#include "lib/common.h"
#include "lib/drop.h"
#include "lib/lxc.h"

/* Device: host-side veth. Direction: from the container. Hook: tc clsact ingress. */
int from_container(struct __sk_buff *skb)
{
	struct endpoint_info *ep = endpoint_lookup(skb->ifindex);
	int ret;

	if (!ep)
		return drop_exit(skb, DROP_UNKNOWN_ENDPOINT);
	ret = lxc_handle(skb, ep);
	if (ret < 0)
		return drop_exit(skb, ret);
	return ret;
}
