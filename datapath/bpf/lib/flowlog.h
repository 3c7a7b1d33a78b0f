/* Flow events: one record per new connection that policy admitted, in the events ring
 * next to the drop events (which are the flow log's drops). Off unless the driver keeps a
 * flow log (CONFIG_FLOW_EVENTS): a new connection costs one ring record, a packet of a
 * known one nothing. datapath/reasons.py parses enum policy_match like the drop reasons.
 *
 * Above a rate the events are a sample: each CPU has a token bucket (flow_budget, filled
 * at the rate of flow_limit), and a new connection that finds it empty, or the ring full,
 * is counted in flow_counts by (identities, endpoint, port, protocol, direction, service,
 * match) instead; the driver reads the counts into aggregated records. At a connection
 * rate of tens of thousands a second the driver's reader would otherwise take a good part
 * of a CPU from the traffic itself; counting costs one hash lookup.
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

/* May this CPU send one more flow event? Credit grows with time, up to the burst; an
 * event spends cost_ns of it. A per-CPU value, changed by no other CPU: no atomics. */
static __always_inline int flow_budget_take(struct flow_budget *budget)
{
	struct flow_limit *limit = flow_limit_lookup();
	__u64 now, credit;

	if (!limit || !limit->cost_ns)
		return 1;
	now = bpf_ktime_get_ns();
	credit = budget->credit_ns + (now - budget->stamp_ns);
	if (credit > limit->burst_ns)
		credit = limit->burst_ns;
	budget->stamp_ns = now;
	if (credit < limit->cost_ns) {
		budget->credit_ns = credit;
		return 0;
	}
	budget->credit_ns = credit - limit->cost_ns;
	return 1;
}

static __always_inline void flow_count(const struct pkt_ctx *ctx, enum policy_match match,
				       struct flow_budget *budget)
{
	struct flow_count_key key = {
		.src_identity = ctx->src_identity,
		.dst_identity = ctx->dst_identity,
		.endpoint_id = ctx->endpoint_id,
		.dport = ctx->flow.dport,
		.rev_nat_index = ctx->rev_nat_index,
		.protocol = ctx->flow.protocol,
		.direction = ctx->direction,
		.family = ctx->flow.family,
		.match = match,
	};
	__u64 *count = flow_count_lookup(&key);

	if (count) {
		*count += 1;	/* this CPU's slot */
		return;
	}
	if (flow_count_insert(&key) == 0)
		return;
	count = flow_count_lookup(&key);	/* another CPU added it meanwhile */
	if (count)
		*count += 1;
	else
		budget->overflow += 1;	/* flow_counts is full */
}

static __always_inline void flow_log_new(const struct pkt_ctx *ctx, enum policy_match match)
{
	struct flow_budget *budget;

	if (!(config_flags() & CONFIG_FLOW_EVENTS))
		return;
	budget = flow_budget_lookup();
	if (!budget)
		return;
	if (flow_budget_take(budget) && event_emit(ctx, EVENT_FLOW, match) == 0)
		return;
	flow_count(ctx, match, budget);
}

#endif
