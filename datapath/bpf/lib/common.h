/* Types and constants shared by every program and by datapath/maps.py.
 * The layouts of struct endpoint_info, struct endpoint_key and struct endpoint_addr
 * are mirrored by ctypes classes in datapath/maps.py: change both together.
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

/* Value of the endpoints map, keyed by the host-side veth's ifindex. */
struct endpoint_info {
	union v6addr ipv6;	/* the container's address */
	union v6addr router6;	/* its IPv6 gateway, answered here, bound nowhere */
	__be32 ipv4;		/* 0: the endpoint has no IPv4 */
	__be32 router4;
	__u8 mac[ETH_ALEN];	/* container-side MAC */
	__u8 node_mac[ETH_ALEN];	/* host-side veth MAC */
	__u16 endpoint_id;
	__u16 flags;		/* reserved */
};
_Static_assert(sizeof(struct endpoint_info) == 56, "endpoint_info layout");

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

#endif
