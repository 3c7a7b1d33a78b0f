/* Rewriting addresses and ports of a parsed packet, keeping the IPv4 header checksum and
 * the TCP, UDP and ICMPv6 checksums (whose pseudo header covers the addresses) right.
 * ICMPv4 has no pseudo header: only the IP header checksum changes.
 */
#ifndef PYCILIUM_NAT_H
#define PYCILIUM_NAT_H

#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "drop.h"
#include "ipv4.h"

#define NAT_SRC 0
#define NAT_DST 1

/* Offset of the upper-layer checksum that covers the addresses, or 0 if none does. */
static __always_inline __u32 nat_l4_csum_off(const struct flow *f)
{
	switch (f->protocol) {
	case IPPROTO_TCP:
		return f->l4_off + offsetof(struct tcphdr, check);
	case IPPROTO_UDP:
		return f->l4_off + offsetof(struct udphdr, check);
	case IPPROTO_ICMPV6:
		return f->l4_off + offsetof(struct icmp6hdr, icmp6_cksum);
	}
	return 0;
}

/* A UDP checksum of 0 means "none" (IPv4) and must stay so. */
static __always_inline __u64 nat_csum_flags(const struct flow *f, __u64 flags)
{
	return f->protocol == IPPROTO_UDP ? flags | BPF_F_MARK_MANGLED_0 : flags;
}

static __always_inline __u32 nat_addr_off(const struct flow *f, int which)
{
	if (f->family == ENDPOINT_KEY_IPV6)
		return IPV6_HDR_OFF + (which == NAT_DST ? offsetof(struct ipv6hdr, daddr)
							: offsetof(struct ipv6hdr, saddr));
	return IPV4_HDR_OFF + (which == NAT_DST ? offsetof(struct iphdr, daddr)
						: offsetof(struct iphdr, saddr));
}

static __always_inline int nat_store_addr6(struct __sk_buff *skb, const struct flow *f,
					   int which, union v6addr *from, union v6addr *to)
{
	__u32 csum_off = nat_l4_csum_off(f);
	__s64 diff = bpf_csum_diff(from->p, sizeof(*from), to->p, sizeof(*to), 0);

	if (bpf_skb_store_bytes(skb, nat_addr_off(f, which), to, sizeof(*to), 0) < 0)
		return DROP_WRITE_FAILED;
	if (csum_off && bpf_l4_csum_replace(skb, csum_off, 0, diff,
					    nat_csum_flags(f, BPF_F_PSEUDO_HDR)) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

static __always_inline int nat_store_addr4(struct __sk_buff *skb, const struct flow *f,
					   int which, __be32 from, __be32 to)
{
	__u32 csum_off = nat_l4_csum_off(f);

	if (bpf_skb_store_bytes(skb, nat_addr_off(f, which), &to, sizeof(to), 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, from, to, sizeof(to)) < 0)
		return DROP_WRITE_FAILED;
	if (csum_off && bpf_l4_csum_replace(skb, csum_off, from, to,
					    nat_csum_flags(f, BPF_F_PSEUDO_HDR | sizeof(to))) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* Source or destination address of the packet and of f becomes addr. */
static __always_inline int nat_store_addr(struct __sk_buff *skb, struct flow *f, int which,
					  const union v6addr *addr)
{
	union v6addr *cur = which == NAT_DST ? &f->daddr : &f->saddr;
	union v6addr to = *addr;
	int ret;

	if (f->family == ENDPOINT_KEY_IPV6)
		ret = nat_store_addr6(skb, f, which, cur, &to);
	else
		ret = nat_store_addr4(skb, f, which, cur->p[0], to.p[0]);
	if (ret < 0)
		return ret;
	*cur = to;
	return 0;
}

/* Source or destination port (TCP, UDP) of the packet and of f becomes port; 0 keeps it. */
static __always_inline int nat_store_port(struct __sk_buff *skb, struct flow *f, int which,
					  __u16 port)
{
	__u16 *cur = which == NAT_DST ? &f->dport : &f->sport;
	__u32 off = f->l4_off + (which == NAT_DST ? offsetof(struct udphdr, dest)
						  : offsetof(struct udphdr, source));
	__be16 from = bpf_htons(*cur), to = bpf_htons(port);

	if (!port || port == *cur)
		return 0;
	if (f->protocol != IPPROTO_TCP && f->protocol != IPPROTO_UDP)
		return 0;
	if (bpf_l4_csum_replace(skb, nat_l4_csum_off(f), from, to,
				nat_csum_flags(f, sizeof(to))) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0) < 0)
		return DROP_WRITE_FAILED;
	*cur = port;
	return 0;
}

/* Address and port (0: keep it) of one end. Returns 0 or a drop reason. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct flow *f, int which,
				       const union v6addr *addr, __u16 port)
{
	int ret = nat_store_addr(skb, f, which, addr);

	if (ret < 0)
		return ret;
	return nat_store_port(skb, f, which, port);
}

#endif
