/* Where accepted packets go. Counted per CPU in trace_counts at the point's value;
 * datapath/reasons.py parses this enum like the drop reasons.
 */
#ifndef PYCILIUM_TRACE_H
#define PYCILIUM_TRACE_H

#include "maps.h"

enum trace_point {
	TRACE_TO_STACK = 0,	/* Passed to the host stack */
	TRACE_TO_LXC = 1,	/* Redirected to a local endpoint */
	TRACE_REPLY = 2,	/* Answered by the datapath (NDisc, ARP, echo) */
};

#define TRACE_POINT_MAX 16

static __always_inline int trace_exit(enum trace_point point, int verdict)
{
	trace_count_inc(point);
	return verdict;
}

#endif
