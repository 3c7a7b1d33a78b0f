/* The XDP prefilter: packets from a denied source prefix are dropped before the stack
 * spends anything on them. Only what is parsed is judged: a frame too short or malformed
 * to read passes (counted as TRACE_PREFILTER_UNPARSED), and so does anything not IP.
 */
#ifndef PYCILIUM_PREFILTER_H
#define PYCILIUM_PREFILTER_H

#include "drop.h"
#include "trace.h"

#define PREFILTER_NONE -1	/* the source is in no denied prefix, or the frame is not IP */
#define PREFILTER_UNPARSED -2	/* too short or malformed to read the source */

/* The prefix id of an IPv4 packet's source, PREFILTER_NONE or PREFILTER_UNPARSED. */
static __always_inline int prefilter_match4(void *data, void *data_end, struct flow *flow)
{
	struct iphdr *ip4 = data + ETH_HLEN_;
	struct cidr4_key key = { .prefixlen = 32 };
	__u32 *id;

	if ((void *)(ip4 + 1) > data_end || ip4->version != 4 || ip4->ihl < 5)
		return PREFILTER_UNPARSED;
	flow->family = ENDPOINT_KEY_IPV4;
	flow->protocol = ip4->protocol;
	flow->saddr.p[0] = ip4->saddr;
	flow->daddr.p[0] = ip4->daddr;
	key.addr = ip4->saddr;
	id = prefilter4_lookup(&key);
	return id ? (int)*id : PREFILTER_NONE;
}

/* The prefix id of an IPv6 packet's source, PREFILTER_NONE or PREFILTER_UNPARSED. */
static __always_inline int prefilter_match6(void *data, void *data_end, struct flow *flow)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN_;
	struct cidr6_key key = { .prefixlen = 128 };
	__u32 *id;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return PREFILTER_UNPARSED;
	flow->family = ENDPOINT_KEY_IPV6;
	flow->protocol = ip6->nexthdr;	/* the first header: enough for an event */
	__builtin_memcpy(&flow->saddr, &ip6->saddr, sizeof(flow->saddr));
	__builtin_memcpy(&flow->daddr, &ip6->daddr, sizeof(flow->daddr));
	key.addr = flow->saddr;
	id = prefilter6_lookup(&key);
	return id ? (int)*id : PREFILTER_NONE;
}

/* The prefix id of the frame's source, PREFILTER_NONE or PREFILTER_UNPARSED. VLAN tags
 * are not looked behind: a tagged frame passes. */
static __always_inline int prefilter_match(const struct xdp_md *xdp, struct flow *flow)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PREFILTER_UNPARSED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return prefilter_match4(data, data_end, flow);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return prefilter_match6(data, data_end, flow);
	return PREFILTER_NONE;
}

/* Count the drop for its prefix (per CPU: a flood on several CPUs never shares a cache
 * line) and in drop_counts, emit a drop event at most every PREFILTER_EVENT_NS per prefix
 * and CPU (a flood would fill the ring and bury every other event), and drop. */
static __always_inline int prefilter_drop(const struct pkt_ctx *ctx, __u32 id)
{
	struct prefilter_count *count = prefilter_count_lookup(id);
	__u64 now;

	drop_count_inc(-DROP_PREFILTER);
	if (count) {
		count->packets += 1;
		now = bpf_ktime_get_ns();
		if (now - count->last_event < PREFILTER_EVENT_NS)
			return XDP_DROP;
		count->last_event = now;
	}
	event_emit(ctx, EVENT_DROP, DROP_PREFILTER);
	return XDP_DROP;
}

#endif
