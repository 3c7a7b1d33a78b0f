/* Drop reasons: the one list. datapath/reasons.py parses this enum (name, value and
 * the comment as description), so keep one enumerator per line in this form.
 * Every drop leaves through drop_exit(), which counts it in the drop_counts per-CPU
 * array at index -reason and emits a drop event.
 */
#ifndef PYCILIUM_DROP_H
#define PYCILIUM_DROP_H

#include "events.h"

enum drop_reason {
	DROP_UNKNOWN_ENDPOINT = -1,	/* Packet from a device with no endpoint */
	DROP_INVALID_SMAC = -2,		/* Invalid source MAC */
	DROP_INVALID_SIP6 = -3,		/* Invalid source IPv6 address */
	DROP_INVALID_SIP4 = -4,		/* Invalid source IPv4 address */
	DROP_UNKNOWN_L3 = -5,		/* Unknown L3 protocol */
	DROP_INVALID_PACKET = -6,	/* Truncated or malformed packet */
	DROP_INVALID_ARP = -7,		/* Unsupported ARP packet */
	DROP_WRITE_FAILED = -8,		/* Packet rewrite failed */
	DROP_POLICY = -9,		/* Policy denied */
	DROP_WAITING_FOR_IDENTITY = -10,	/* Endpoint is waiting for its identity */
	DROP_FRAG_IPV4 = -11,		/* IPv4 fragment (policy cannot see its ports) */
	DROP_FRAG_IPV6 = -12,		/* IPv6 fragment (policy cannot see its ports) */
	DROP_INVALID_EXTHDR = -13,	/* Too many or malformed IPv6 extension headers */
	DROP_NO_SERVICE_BACKEND = -14,	/* Service has no backend */
	DROP_NO_REV_NAT = -15,		/* Reply of a flow whose service is gone */
	DROP_NDISC_HOP_LIMIT = -16,	/* Neighbour discovery not from a neighbour (hop limit not 255) */
	DROP_NDISC_ROUTER = -17,	/* Router advertisement or redirect from a container */
	DROP_NDISC_TARGET = -18,	/* Neighbour advertisement for an address not the container's */
	DROP_FORGED_SOURCE = -19,	/* A local endpoint's address as source, not from its veth */
	DROP_INTERNAL_NETWORK = -20,	/* Beyond the host, from an endpoint of an internal network */
	DROP_PREFILTER = -21,		/* Source in the XDP prefilter's deny list */
	DROP_NAT64_UNSUPPORTED = -22,	/* Not translatable between IPv6 and IPv4 (extension headers, IPv4 options, ICMP type, UDP without checksum) */
	DROP_IPV6_ONLY = -23,		/* IPv4 from an endpoint of an IPv6-only network */
	DROP_NAT46_NO_SERVICE = -24,	/* IPv4 to an IPv6-only endpoint's veth, for neither its NAT64 side nor a service */
	/* Between hosts (lib/tunnel.h); numbered apart so that other new reasons need not move. */
	DROP_NO_TUNNEL = -40,		/* To another node's endpoint, and this node has no tunnel device */
	DROP_TUNNEL_IDENTITY = -41,	/* Source identity does not fit a VXLAN VNI (24 bits) */
	DROP_TUNNEL_NO_KEY = -42,	/* From the tunnel device without tunnel metadata */
	DROP_TUNNEL_DESTINATION = -43,	/* From the tunnel, for neither a local endpoint nor the host */
	DROP_TUNNEL_NO_NODE = -44,	/* Routed into the tunnel, to an address of no known node */
	DROP_TUNNEL_UNKNOWN_SENDER = -45, /* From the tunnel, sent from an address of no known node */
};

/* Size of the drop_counts array; every reason's -value must stay below it. */
#define DROP_REASON_MAX 64

static __always_inline int drop_exit(struct __sk_buff *skb, const struct pkt_ctx *ctx, int reason)
{
	__u32 index = -reason;

	if (index >= DROP_REASON_MAX)
		index = -DROP_INVALID_PACKET;
	drop_count_inc(index);
	event_emit(ctx, EVENT_DROP, -(int)index);
	return TC_ACT_SHOT;
}

#endif
