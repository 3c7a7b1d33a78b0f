/* Where accepted packets go. Counted per CPU in trace_counts at the point's value, and
 * emitted as trace events when CONFIG_TRACE_EVENTS is on; datapath/reasons.py parses
 * this enum like the drop reasons.
 */
#ifndef PYCILIUM_TRACE_H
#define PYCILIUM_TRACE_H

#include "events.h"

enum trace_point {
	TRACE_TO_STACK = 0,	/* Passed to the host stack */
	TRACE_TO_LXC = 1,	/* Redirected to a local endpoint */
	TRACE_REPLY = 2,	/* Answered by the datapath (NDisc, ARP, echo) */
	TRACE_TO_CONTAINER = 3,	/* Delivered into the container */
	TRACE_PREFILTER_UNPARSED = 4,	/* Passed by the XDP prefilter unparsed: short or malformed */
	TRACE_TO_OVERLAY = 8,	/* Into the VXLAN tunnel, to another node */
};

#define TRACE_POINT_MAX 16

static __always_inline int trace_exit(const struct pkt_ctx *ctx, enum trace_point point, int verdict)
{
	trace_count_inc(point);
	if (config_flags() & CONFIG_TRACE_EVENTS)
		event_emit(ctx, EVENT_TRACE, point);
	return verdict;
}

#endif
