/* Types and constants shared by every program and by datapath/abi.py.
 * The constants and the layouts of every struct with a _Static_assert below are mirrored
 * in datapath/abi.py (tests/datapath/test_layout.py compares values, sizes and field
 * offsets): change both together.
 */
#ifndef PYCILIUM_COMMON_H
#define PYCILIUM_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

/* A helper returns CTX_CONTINUE when the packet is not its business; a negative
 * value is a drop reason (lib/drop.h); anything else is the final TC verdict.
 */
#define CTX_CONTINUE 1000

#define ETH_HLEN_ 14
#define IPV6_HDR_OFF ETH_HLEN_
#define IPV4_HDR_OFF ETH_HLEN_
#define IPV6_L4_OFF (ETH_HLEN_ + sizeof(struct ipv6hdr))

union v6addr {
	__u8 addr[16];
	__be32 p[4];
};

/* Reserved security identities; endpoints have identities >= 256. */
#define IDENTITY_ANY 0		/* only as a wildcard in policy keys */
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_INIT 3		/* not known yet: the endpoint sends and receives nothing */
#define IDENTITY_UNMANAGED 4
/* Endpoints' identities are [FIRST_ENDPOINT_IDENTITY, FIRST_CIDR_IDENTITY); CIDR prefixes'
 * follow. */
#define FIRST_ENDPOINT_IDENTITY 256
#define FIRST_CIDR_IDENTITY 0x1000000

/* Direction of traffic relative to an endpoint. */
#define DIR_INGRESS 0		/* to the endpoint */
#define DIR_EGRESS 1		/* from the endpoint */

/* endpoint_info.flags */
#define EP_F_INGRESS_ENFORCED 1	/* ingress policy applies; otherwise all is allowed */
#define EP_F_EGRESS_ENFORCED 2
#define EP_F_MASQUERADE 4	/* beyond the host, leaves with the host's address (MARK_MASQUERADE) */
#define EP_F_INTERNAL 8		/* nothing beyond the host: an internal network's endpoint */
#define EP_F_NAT64 16		/* IPv6-only: IPv4 only through NAT64 (lib/nat64.h) */

/* skb->mark bit on a packet that netfilter's MASQUERADE rule of this driver translates
 * (datapath/netfilter/firewall.py); no other bit of the mark is touched. */
#define MARK_MASQUERADE 0x02000000

/* Value of the endpoints map, keyed by the host-side veth's ifindex. */
struct endpoint_info {
	union v6addr ipv6;	/* the container's address */
	union v6addr router6;	/* its IPv6 gateway, answered here, bound nowhere */
	__be32 ipv4;		/* 0: the endpoint has no IPv4 */
	__be32 router4;
	__u8 mac[ETH_ALEN];	/* container-side MAC */
	__u8 node_mac[ETH_ALEN];	/* host-side veth MAC */
	__u16 endpoint_id;
	__u16 flags;		/* EP_F_* */
	__u32 identity;		/* security identity; IDENTITY_INIT until known */
};
_Static_assert(sizeof(struct endpoint_info) == 60, "endpoint_info layout");

#define ENDPOINT_KEY_IPV4 1
#define ENDPOINT_KEY_IPV6 2

/* Key of the endpoint address map: one map for both families. */
struct endpoint_key {
	union v6addr ip;	/* IPv4 lives in ip.p[0], the rest is zero */
	__u8 family;		/* ENDPOINT_KEY_IPV4 or ENDPOINT_KEY_IPV6 */
	__u8 pad[3];
};
_Static_assert(sizeof(struct endpoint_key) == 20, "endpoint_key layout");

struct endpoint_addr {
	__u32 ifindex;		/* host-side veth of the endpoint owning the address */
	__u16 endpoint_id;
	__u16 pad;
};
_Static_assert(sizeof(struct endpoint_addr) == 8, "endpoint_addr layout");

/* Key of the policy map. Presence of a key means allow; 0 in identity, dport or
 * protocol is a wildcard.
 */
struct policy_key {
	__u16 endpoint_id;
	__u8 direction;		/* DIR_INGRESS or DIR_EGRESS */
	__u8 protocol;		/* IANA protocol number */
	__u16 dport;		/* host byte order */
	__u16 pad;
	__u32 identity;		/* peer identity */
};
_Static_assert(sizeof(struct policy_key) == 12, "policy_key layout");

struct policy_entry {
	__u64 packets;		/* new flows admitted by this entry */
	__u64 bytes;
};
_Static_assert(sizeof(struct policy_entry) == 16, "policy_entry layout");

/* Keys of the two LPM tries mapping CIDRs (and the host's addresses) to identities. */
struct cidr4_key {
	__u32 prefixlen;
	__be32 addr;
};
_Static_assert(sizeof(struct cidr4_key) == 8, "cidr4_key layout");

struct cidr6_key {
	__u32 prefixlen;
	union v6addr addr;
};
_Static_assert(sizeof(struct cidr6_key) == 20, "cidr6_key layout");

/* A flow as one hook sees it; addresses in the ENDPOINT_KEY_* family's form. */
struct ct_key {
	union v6addr saddr;	/* IPv4 lives in p[0], the rest is zero */
	union v6addr daddr;
	__u16 sport;		/* host byte order; ICMP echo: the id (request: sport, reply: dport) */
	__u16 dport;
	__u16 endpoint_id;	/* the endpoint whose hook made the entry */
	__u8 protocol;
	__u8 direction;		/* DIR_INGRESS or DIR_EGRESS of endpoint_id */
	__u8 family;		/* ENDPOINT_KEY_IPV4 or ENDPOINT_KEY_IPV6 */
	__u8 pad[3];
};
_Static_assert(sizeof(struct ct_key) == 44, "ct_key layout");

#define CT_F_TX_CLOSING 1	/* FIN or RST seen in the original direction */
#define CT_F_RX_CLOSING 2	/* FIN or RST seen in the reply direction */
#define CT_F_SEEN_REPLY 4	/* the flow is established */
#define CT_F_LOOPBACK 8		/* hairpin: the endpoint reaching itself through a service */

struct ct_entry {
	__u32 lifetime;		/* expiry, in seconds of bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u16 rev_nat_index;	/* service of a load-balanced flow (lb_revnat key); 0: none */
	__u16 flags;		/* CT_F_* */
	__u64 packets;		/* both directions */
	__u64 bytes;
};
_Static_assert(sizeof(struct ct_entry) == 24, "ct_entry layout");

/* Key of lb_services: a frontend. port 0 and protocol 0: the L3-only frontend of addr. */
struct lb_key {
	union v6addr addr;	/* IPv4 lives in p[0], the rest is zero */
	__u16 port;		/* host byte order */
	__u8 protocol;
	__u8 family;		/* ENDPOINT_KEY_IPV4 or ENDPOINT_KEY_IPV6 */
};
_Static_assert(sizeof(struct lb_key) == 20, "lb_key layout");

struct lb_service {
	__u16 id;		/* also the reverse NAT index */
	__u16 count;		/* backend slots 0..count-1 in lb_slots; 0: no backend */
	__u16 flags;		/* none yet */
	__u16 pad;
};
_Static_assert(sizeof(struct lb_service) == 8, "lb_service layout");

struct lb_slot_key {
	__u16 service_id;
	__u16 slot;
};
_Static_assert(sizeof(struct lb_slot_key) == 4, "lb_slot_key layout");

/* A backend (value of lb_slots) or a frontend (value of lb_revnat); the family is the
 * service's. port 0: keep the port the packet has.
 */
struct lb_addr {
	union v6addr addr;
	__u16 port;		/* host byte order */
	__u16 pad;
};
_Static_assert(sizeof(struct lb_addr) == 20, "lb_addr layout");

/* Value of lb_flows, keyed by the client's struct ct_key to the frontend: the backend
 * that flow was given, so that it keeps it whatever happens to the slots.
 */
struct lb_flow {
	union v6addr backend;
	__u16 backend_port;	/* host byte order; 0: the client's */
	__u16 service_id;
	__u32 lifetime;		/* as ct_entry.lifetime */
};
_Static_assert(sizeof(struct lb_flow) == 24, "lb_flow layout");

/* Value of the one-slot config array. */
#define CONFIG_TRACE_EVENTS 1	/* emit trace events, not only drop events */
#define CONFIG_FLOW_EVENTS 2	/* emit a flow event per new connection (lib/flowlog.h) */

struct datapath_config {
	__u32 flags;
};
_Static_assert(sizeof(struct datapath_config) == 4, "datapath_config layout");

#define EVENT_DROP 1
#define EVENT_TRACE 2
#define EVENT_FLOW 3		/* a new connection; code: enum policy_match */

/* A record of the events ring buffer. */
struct datapath_event {
	__u8 kind;		/* EVENT_DROP, EVENT_TRACE or EVENT_FLOW */
	__u8 direction;
	__u8 protocol;
	__u8 family;		/* 0: the packet was not parsed that far */
	__s32 code;		/* drop reason (negative) or trace point */
	__u16 endpoint_id;
	__u16 sport;
	__u16 dport;
	__u16 rev_nat_index;	/* service of the packet's flow (pkt_ctx.rev_nat_index); 0: none */
	__u32 ifindex;		/* the device whose hook emitted the event */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 pad2;
	union v6addr saddr;
	union v6addr daddr;
};
_Static_assert(sizeof(struct datapath_event) == 64, "datapath_event layout");

/* Flow records above a rate (lib/flowlog.h): each CPU may send a flow event per new
 * connection while it has credit; a connection beyond it, or one the full events ring
 * refuses, is counted in flow_counts instead. Value of the one-slot flow_limit array,
 * set by the driver.
 */
struct flow_limit {
	__u64 cost_ns;		/* credit one flow event costs: 1e9 / events a second; 0: no limit */
	__u64 burst_ns;		/* the most credit a CPU saves up */
};
_Static_assert(sizeof(struct flow_limit) == 16, "flow_limit layout");

/* Value of the per-CPU one-slot flow_budget array. */
struct flow_budget {
	__u64 stamp_ns;		/* bpf_ktime_get_ns() when credit_ns was last brought up to date */
	__u64 credit_ns;
	__u64 overflow;		/* connections counted nowhere else: flow_counts was full */
};
_Static_assert(sizeof(struct flow_budget) == 24, "flow_budget layout");

/* Key of the per-CPU flow_counts hash: new connections not sent as flow events, counted
 * by what a flow record says of them (the value is a __u64 count; the driver reads it).
 */
struct flow_count_key {
	__u32 src_identity;
	__u32 dst_identity;
	__u16 endpoint_id;
	__u16 dport;
	__u16 rev_nat_index;
	__u8 protocol;
	__u8 direction;
	__u8 family;
	__u8 match;		/* enum policy_match (lib/flowlog.h) */
	__u8 pad[2];
};
_Static_assert(sizeof(struct flow_count_key) == 20, "flow_count_key layout");

/* ICMP classes that matter to conntrack and policy. */
#define FLOW_ICMP_NONE 0
#define FLOW_ICMP_ECHO_REQUEST 1
#define FLOW_ICMP_ECHO_REPLY 2
#define FLOW_ICMP_ERROR 3	/* destination unreachable, packet too big, time exceeded... */
#define FLOW_ICMP_NDISC 4	/* ICMPv6 133-137: never subject to policy */
#define FLOW_ICMP_OTHER 5

/* What the parsers learnt about a packet. */
struct flow {
	union v6addr saddr;
	union v6addr daddr;
	__u16 sport;		/* host byte order, as in struct ct_key */
	__u16 dport;
	__u8 protocol;		/* upper-layer protocol, behind any IPv6 extension headers */
	__u8 family;		/* ENDPOINT_KEY_IPV4 or ENDPOINT_KEY_IPV6; 0 before parsing */
	__u8 tcp_flags;
	__u8 icmp;		/* FLOW_ICMP_* */
	__u32 l4_off;
};

/* One packet in one hook: who it is for, which way it goes and what it is. */
struct pkt_ctx {
	struct flow flow;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 endpoint_id;
	__u8 direction;
	__u8 loopback;		/* a hairpinned flow: no policy applies (it stays in the endpoint) */
	__u16 rev_nat_index;	/* egress: service the packet was translated for; ingress: of the
				 * conntrack entry a reply belongs to, or the NAT46 service */
	__u8 nat46;		/* ingress: translated for a NAT46 service (lib/nat46.h) */
	__u8 dst_nat64_side;	/* egress: the destination is a local endpoint's NAT64 side */
	/* Egress: the local endpoint owning the destination (as translated), found with its
	 * identity so that the redirect needs no second lookup; dst_ifindex 0: none. */
	__u32 dst_ifindex;
	__u8 dst_mac[ETH_ALEN];
	__u8 dst_node_mac[ETH_ALEN];
	/* Egress: the destination lives on another node (the ipcache says), this one. */
	__be32 tunnel_node;
};

static __always_inline int ipv6_addr_equals(const union v6addr *a, const union v6addr *b)
{
	return a->p[0] == b->p[0] && a->p[1] == b->p[1] &&
	       a->p[2] == b->p[2] && a->p[3] == b->p[3];
}

static __always_inline int ipv6_addr_is_linklocal(const union v6addr *a)
{
	return a->addr[0] == 0xfe && (a->addr[1] & 0xc0) == 0x80;
}

static __always_inline int ipv6_addr_is_unspec(const union v6addr *a)
{
	return !(a->p[0] | a->p[1] | a->p[2] | a->p[3]);
}

static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* XDP prefilter (bpf_xdp.c): the deny tries prefilter4 and prefilter6 map a source prefix
 * (struct cidr4_key, struct cidr6_key) to its prefix id, the slot of its per-CPU counter
 * in prefilter_drops; ids are shared by both families. */
#define PREFILTER_MAX 8192		/* prefix ids 0..PREFILTER_MAX-1 */
#define PREFILTER_EVENT_NS 1000000	/* a drop event per prefix and CPU per ms at most */

struct prefilter_count {
	__u64 packets;
	__u64 last_event;	/* bpf_ktime_get_ns() of this CPU's last drop event of the prefix */
};
_Static_assert(sizeof(struct prefilter_count) == 16, "prefilter_count layout");

/* Several hosts (lib/tunnel.h). The ipcache maps the address of an endpoint on another
 * node (struct endpoint_key) to its identity and that node's underlay address; the tunnel
 * array's one slot holds the ifindex of the VXLAN device (0: none). */
struct ipcache_entry {
	__u32 identity;
	__be32 node;		/* underlay IPv4 address of the node the address lives on */
};
_Static_assert(sizeof(struct ipcache_entry) == 8, "ipcache_entry layout");

/* Services across hosts with direct server return (lib/dsr.h). nodeport4: a published
 * IPv4 port of this node (its address, 0 for any of the host's; port; protocol) -> the
 * container's address and port. dsr4 (LRU): on the container's node, a flow that came with
 * the DSR option (client -> container) -> the frontend its replies leave from. */
struct nodeport_key {
	__be32 addr;
	__u16 port;		/* host byte order, as every port in these maps */
	__u8 protocol;
	__u8 pad;
};
_Static_assert(sizeof(struct nodeport_key) == 8, "nodeport_key layout");

struct addr4_port {
	__be32 addr;
	__u16 port;
	__u16 pad;
};
_Static_assert(sizeof(struct addr4_port) == 8, "addr4_port layout");

struct dsr_key {
	__be32 saddr;
	__be32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 pad[3];
};
_Static_assert(sizeof(struct dsr_key) == 16, "dsr_key layout");

/* skb->mark of a packet from_overlay redirects to a local endpoint: MARK_IDENTITY and the
 * sender's identity (the VNI) in the low 24 bits, for to_container's ingress policy. Only
 * trusted with the whole MARK_IDENTITY_MASK nibble equal: a container cannot set a mark the
 * host sees (the veth clears it between namespaces). */
#define MARK_IDENTITY 0x0c000000
#define MARK_IDENTITY_MASK 0x0f000000
#define TUNNEL_ID_MAX 0x00ffffff	/* a VNI has 24 bits */
#define TUNNEL_TTL 64			/* of the outer IPv4 header */

#endif
