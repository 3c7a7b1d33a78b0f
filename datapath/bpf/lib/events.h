/* Drop, trace and flow events: one record per event in the pinned "events" ring buffer,
 * read by datapath/events.py. A full ring loses events, never packets.
 */
#ifndef PYCILIUM_EVENTS_H
#define PYCILIUM_EVENTS_H

#include "maps.h"

/* Returns 0 if the ring took the event, -1 if it was full. */
static __always_inline int event_emit(const struct pkt_ctx *ctx, __u8 kind, __s32 code)
{
	struct datapath_event *ev = event_reserve();

	if (!ev)
		return -1;
	ev->kind = kind;
	ev->direction = ctx->direction;
	ev->protocol = ctx->flow.protocol;
	ev->family = ctx->flow.family;
	ev->code = code;
	ev->endpoint_id = ctx->endpoint_id;
	ev->sport = ctx->flow.sport;
	ev->dport = ctx->flow.dport;
	ev->rev_nat_index = ctx->rev_nat_index;
	ev->ifindex = ctx->ifindex;
	ev->src_identity = ctx->src_identity;
	ev->dst_identity = ctx->dst_identity;
	ev->pad2 = 0;
	ev->saddr = ctx->flow.saddr;
	ev->daddr = ctx->flow.daddr;
	/* A flow event wakes no reader: the driver's reader drains the ring at least every
	 * 100 ms (datapath/events.py), so a burst of new connections costs it one wakeup, not
	 * one each. Drops and traces wake it if it has read everything before them (adaptive):
	 * behind waiting flow events they wait for the poll too, and a drop flood does not
	 * wake it once per drop. */
	bpf_ringbuf_submit(ev, kind == EVENT_FLOW ? BPF_RB_NO_WAKEUP : 0);
	return 0;
}

#endif
