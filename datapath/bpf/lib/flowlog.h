/* Flow events: one record per new connection that policy admitted, in the events ring
 * next to the drop events (which are the flow log's drops). Off unless the driver keeps a
 * flow log (CONFIG_FLOW_EVENTS): a new connection costs one ring record, a packet of a
 * known one nothing. datapath/reasons.py parses enum policy_match like the drop reasons.
 */
#ifndef PYCILIUM_FLOWLOG_H
#define PYCILIUM_FLOWLOG_H

#include "events.h"

/* Which of policy_match()'s candidate keys admitted the flow: the code of its event. */
enum policy_match {
	POLICY_MATCH_NONE = 0,		/* No policy applies in this direction */
	POLICY_MATCH_PEER_PORT = 1,	/* Peer identity, port and protocol */
	POLICY_MATCH_PEER_PROTO = 2,	/* Peer identity and protocol, any port */
	POLICY_MATCH_PEER = 3,		/* Peer identity, any port and protocol */
	POLICY_MATCH_ANY_PORT = 4,	/* Any peer, port and protocol */
	POLICY_MATCH_ANY_PROTO = 5,	/* Any peer, protocol, any port */
	POLICY_MATCH_ANY = 6,		/* Any peer, any port and protocol */
};

static __always_inline void flow_log_new(const struct pkt_ctx *ctx, enum policy_match match)
{
	if (config_flags() & CONFIG_FLOW_EVENTS)
		event_emit(ctx, EVENT_FLOW, match);
}

#endif
