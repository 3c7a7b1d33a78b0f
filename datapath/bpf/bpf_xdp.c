/* The XDP prefilter, attached to the host devices the operator names.
 *
 * Compiled by datapath/loader.py when the first device gets it; the map file descriptors
 * come in as -D*_MAP_FD (see lib/maps.h). Only the entry function lives here.
 */
#include "lib/common.h"
#include "lib/prefilter.h"

/* Device: a host device named with --prefilter-device or `cilium prefilter update --device`.
 * Direction: into the host. Hook: XDP, native where the driver has it, generic otherwise.
 * Drops packets whose source lies in a denied prefix; everything else passes.
 */
int xdp_prefilter(struct xdp_md *xdp)
{
	struct pkt_ctx ctx = { .ifindex = xdp->ingress_ifindex, .direction = DIR_INGRESS };
	int id = prefilter_match(xdp, &ctx.flow);

	if (id == PREFILTER_UNPARSED)
		return trace_exit(&ctx, TRACE_PREFILTER_UNPARSED, XDP_PASS);
	if (id < 0)
		return XDP_PASS;
	return prefilter_drop(&ctx, id);
}
