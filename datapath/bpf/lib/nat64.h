/* Stateless IPv6 <-> IPv4 translation (RFC 7915) for endpoints of IPv6-only networks.
 *
 * Such an endpoint (EP_F_NAT64) reaches IPv4 address a.b.c.d as NAT64_PREFIX::a.b.c.d
 * (RFC 6052, a /96; the loader passes the prefix as NAT64_PREFIX_W0..W2). Its packets to
 * the prefix leave the from-container hook as IPv4 from the endpoint's own IPv4 address,
 * which the container never configures a route for: a 1:1 translation identity that the
 * stack routes back to the endpoint's veth, and that netfilter masquerades like any
 * outbound flow (EP_F_MASQUERADE). At the to-container hook every IPv4 packet for the
 * endpoint becomes IPv6 from NAT64_PREFIX::source before conntrack and policy see it.
 * Conntrack only ever sees the IPv6 side; for identity and policy NAT64_PREFIX::a.b.c.d is
 * a.b.c.d (lib/nat64_addr.h).
 *
 * Translated: TCP and UDP (checksums adjusted for the pseudo header), ICMP echo <-> ICMPv6
 * echo, and the ICMP errors about such flows both ways, the quoted packet translated too
 * (and cut to its header and 8 bytes of upper layer, which is all RFC 792 asks for).
 * Refused and counted: fragments (DROP_FRAG_IPV4/6), IPv6 extension headers, IPv4 options,
 * UDP over IPv4 without a checksum, other ICMP types (DROP_NAT64_UNSUPPORTED).
 */
#ifndef PYCILIUM_NAT64_H
#define PYCILIUM_NAT64_H

#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "drop.h"
#include "flow.h"
#include "ipv6.h"
#include "nat64_addr.h"

#define NAT64_HDR_GROWTH 20	/* sizeof(struct ipv6hdr) - sizeof(struct iphdr) */
#define NAT64_DF_ABOVE 1260	/* RFC 7915 5.1: DF set on IPv4 packets larger than this */
#define NAT64_MIN_MTU6 1280
#define ICMP4_L4_OFF (IPV4_HDR_OFF + sizeof(struct iphdr))
#define IPV4_DF 0x4000

/* What an ICMP error quotes, as far as it is kept: the header and 8 bytes of upper layer. */
struct nat64_quote6 {
	struct ipv6hdr ip6;
	__u8 l4[L4_HEAD_LEN];
};

struct nat64_quote4 {
	struct iphdr ip4;
	__u8 l4[L4_HEAD_LEN];
};

/* An ICMP error as it leaves the translator. */
struct nat64_error6 {
	struct icmp6hdr icmp6;
	struct nat64_quote6 quote;
};

struct nat64_error4 {
	struct icmphdr icmp;
	struct nat64_quote4 quote;
};

/* Does this endpoint translate the flow? Its IPv6 packets to the prefix. */
static __always_inline int nat64_egress_applies(const struct endpoint_info *ep, const struct flow *f)
{
	return (ep->flags & EP_F_NAT64) && f->family == ENDPOINT_KEY_IPV6 &&
	       nat64_in_prefix(&f->daddr);
}

/* ICMP type/code mappings (RFC 7915 4.2, 5.2); the result in *type, *code, *mtu. Returns 0
 * or DROP_NAT64_UNSUPPORTED. mtu is the value as found, in host byte order. */
static __always_inline int nat64_icmp4_to6(__u8 *type, __u8 *code, __u32 *mtu)
{
	switch (*type) {
	case ICMP_ECHO:
		*type = ICMPV6_ECHO_REQUEST;
		return 0;
	case ICMP_ECHOREPLY:
		*type = ICMPV6_ECHO_REPLY;
		return 0;
	case ICMP_TIME_EXCEEDED:
		*type = ICMPV6_TIME_EXCEED;
		return 0;
	case ICMP_DEST_UNREACH:
		break;
	default:
		return DROP_NAT64_UNSUPPORTED;
	}
	switch (*code) {
	case ICMP_PORT_UNREACH:
		*type = ICMPV6_DEST_UNREACH;
		*code = ICMPV6_PORT_UNREACH;
		return 0;
	case ICMP_FRAG_NEEDED:
		*type = ICMPV6_PKT_TOOBIG;
		*code = 0;
		/* The IPv6 packet is 20 bytes larger than the IPv4 one it became. */
		*mtu += NAT64_HDR_GROWTH;
		if (*mtu < NAT64_MIN_MTU6)
			*mtu = NAT64_MIN_MTU6;
		return 0;
	case ICMP_NET_ANO:
	case ICMP_HOST_ANO:
	case ICMP_PKT_FILTERED:
		*type = ICMPV6_DEST_UNREACH;
		*code = ICMPV6_ADM_PROHIBITED;
		return 0;
	}
	*type = ICMPV6_DEST_UNREACH;
	*code = ICMPV6_NOROUTE;
	return 0;
}

static __always_inline int nat64_icmp6_to4(__u8 *type, __u8 *code, __u32 *mtu)
{
	switch (*type) {
	case ICMPV6_ECHO_REQUEST:
		*type = ICMP_ECHO;
		return 0;
	case ICMPV6_ECHO_REPLY:
		*type = ICMP_ECHOREPLY;
		return 0;
	case ICMPV6_TIME_EXCEED:
		*type = ICMP_TIME_EXCEEDED;
		return 0;
	case ICMPV6_PKT_TOOBIG:
		*type = ICMP_DEST_UNREACH;
		*code = ICMP_FRAG_NEEDED;
		*mtu = *mtu > NAT64_HDR_GROWTH ? *mtu - NAT64_HDR_GROWTH : 0;
		return 0;
	case ICMPV6_DEST_UNREACH:
		break;
	default:
		return DROP_NAT64_UNSUPPORTED;
	}
	switch (*code) {
	case ICMPV6_PORT_UNREACH:
		*code = ICMP_PORT_UNREACH;
		break;
	case ICMPV6_ADM_PROHIBITED:
		*code = ICMP_HOST_ANO;
		break;
	default:
		*code = ICMP_HOST_UNREACH;
	}
	*type = ICMP_DEST_UNREACH;
	return 0;
}

/* ICMPv6 has a pseudo header, ICMP none: its sum is added (IPv4 -> IPv6) or taken away
 * (IPv6 -> IPv4), to seed. */
static __always_inline __s64 nat64_pseudo6(const union v6addr *saddr, const union v6addr *daddr,
					   __u32 len, int add, __s64 seed)
{
	struct ipv6_pseudo_hdr ph = {};

	ph.saddr = *saddr;
	ph.daddr = *daddr;
	ph.len = bpf_htonl(len);
	ph.nexthdr = IPPROTO_ICMPV6;
	if (add)
		return bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), seed);
	return bpf_csum_diff((__be32 *)&ph, sizeof(ph), NULL, 0, seed);
}

/* Checksum change of an ICMP header whose first word (type, code) goes from old to new. */
static __always_inline __s64 nat64_type_diff(__u8 old_type, __u8 old_code, __u8 new_type,
					     __u8 new_code, __s64 seed)
{
	__be32 from = 0, to = 0;

	((__u8 *)&from)[0] = old_type;
	((__u8 *)&from)[1] = old_code;
	((__u8 *)&to)[0] = new_type;
	((__u8 *)&to)[1] = new_code;
	return bpf_csum_diff(&from, sizeof(from), &to, sizeof(to), seed);
}

static __always_inline __u16 nat64_fold(__s64 sum)
{
	return csum_fold32((__u32)sum);
}

/* The checksum field at data[off] updated by a partial sum diff (RFC 1624: ~(~old + diff)),
 * both in memory order as bpf_csum_diff sums. */
static __always_inline void nat64_csum_apply(__u8 *data, __u32 off, __s64 diff)
{
	__u16 old, now;

	__builtin_memcpy(&old, data + off, sizeof(old));
	now = csum_fold32((__u64)(__u16)~old + (__u32)diff);
	__builtin_memcpy(data + off, &now, sizeof(now));
}

/* The same for the checksum of the UDP header udp, which 0 means none: that stays so (over
 * IPv6 only a tunnel sends it, RFC 6936), and a sum that comes out as 0 is sent as 0xffff
 * (RFC 768), as BPF_F_MARK_MANGLED_0 has the kernel do for the packet's own. */
static __always_inline void nat64_udp_csum_apply(__u8 *udp, __s64 diff)
{
	__u32 off = offsetof(struct udphdr, check);

	if (!(udp[off] | udp[off + 1]))
		return;
	nat64_csum_apply(udp, off, diff);
	if (!(udp[off] | udp[off + 1]))
		udp[off] = udp[off + 1] = 0xff;
}

static __always_inline void nat64_ipv4_header(struct iphdr *ip4, __u16 payload, __u8 ttl,
					      __u8 protocol, __be32 saddr, __be32 daddr, __u8 tos)
{
	__u16 total = payload + sizeof(struct iphdr);

	ip4->version = 4;
	ip4->ihl = 5;
	ip4->tos = tos;
	ip4->tot_len = bpf_htons(total);
	ip4->id = 0;
	ip4->frag_off = total > NAT64_DF_ABOVE ? bpf_htons(IPV4_DF) : 0;
	if (!ip4->frag_off)
		ip4->id = (__be16)bpf_get_prandom_u32();
	ip4->ttl = ttl;
	ip4->protocol = protocol;
	ip4->check = 0;
	ip4->saddr = saddr;
	ip4->daddr = daddr;
	ip4->check = csum_fold32((__u32)bpf_csum_diff(NULL, 0, (__be32 *)ip4, sizeof(*ip4), 0));
}

static __always_inline void nat64_ipv6_header(struct ipv6hdr *ip6, __u16 payload, __u8 hop_limit,
					      __u8 nexthdr, const union v6addr *saddr,
					      const union v6addr *daddr, __u8 tos)
{
	__builtin_memset(ip6, 0, sizeof(*ip6));
	ip6->version = 6;
	ip6->priority = tos >> 4;
	ip6->flow_lbl[0] = (tos & 0xf) << 4;
	ip6->payload_len = bpf_htons(payload);
	ip6->nexthdr = nexthdr;
	ip6->hop_limit = hop_limit;
	__builtin_memcpy(&ip6->saddr, saddr, sizeof(*saddr));
	__builtin_memcpy(&ip6->daddr, daddr, sizeof(*daddr));
}

static __always_inline __u8 nat64_tos(const struct ipv6hdr *ip6)
{
	return ip6->priority << 4 | ip6->flow_lbl[0] >> 4;
}

/* The packet an ICMPv6 error of the endpoint quotes (one it received, from the prefix),
 * as IPv4: what its IPv4 side received. The UDP and echo checksums follow the addresses. */
static __always_inline int nat64_quote_to4(const struct endpoint_info *ep,
					   const struct nat64_quote6 *in, struct nat64_quote4 *out)
{
	const union v6addr *saddr = (const union v6addr *)&in->ip6.saddr;
	const union v6addr *daddr = (const union v6addr *)&in->ip6.daddr;
	__be32 addrs4[2] = { saddr->p[3], ep->ipv4 };
	__u8 protocol = in->ip6.nexthdr;
	__u16 payload = bpf_ntohs(in->ip6.payload_len);
	__u32 mtu = 0;
	__s64 diff;

	if (!nat64_in_prefix(saddr) || !ipv6_addr_equals(daddr, &ep->ipv6))
		return DROP_NAT64_UNSUPPORTED;
	__builtin_memcpy(out->l4, in->l4, sizeof(out->l4));
	if (protocol == IPPROTO_UDP) {
		diff = bpf_csum_diff((__be32 *)saddr, 32, addrs4, sizeof(addrs4), 0);
		nat64_udp_csum_apply(out->l4, diff);
	} else if (protocol == IPPROTO_ICMPV6) {
		__u8 type = in->l4[0], code = in->l4[1];

		if (type != ICMPV6_ECHO_REQUEST && type != ICMPV6_ECHO_REPLY)
			return DROP_NAT64_UNSUPPORTED;
		nat64_icmp6_to4(&type, &code, &mtu);
		out->l4[0] = type;
		diff = nat64_pseudo6(saddr, daddr, payload, 0, 0);
		diff = nat64_type_diff(in->l4[0], in->l4[1], type, code, diff);
		nat64_csum_apply(out->l4, offsetof(struct icmphdr, checksum), diff);
		protocol = IPPROTO_ICMP;
	} else if (protocol != IPPROTO_TCP) {
		return DROP_NAT64_UNSUPPORTED;
	}
	nat64_ipv4_header(&out->ip4, payload, in->ip6.hop_limit, protocol, saddr->p[3], ep->ipv4,
			  nat64_tos(&in->ip6));
	return 0;
}

/* The packet an ICMP error quotes, as IPv6: the endpoint's IPv4 side's packet becomes the
 * one the endpoint sent. */
static __always_inline int nat64_quote_to6(const struct endpoint_info *ep,
					   const struct nat64_quote4 *in, struct nat64_quote6 *out)
{
	union v6addr daddr;
	__u8 protocol = in->ip4.protocol;
	__u16 total = bpf_ntohs(in->ip4.tot_len);
	__u16 payload = total > sizeof(struct iphdr) ? total - sizeof(struct iphdr) : 0;
	__u32 mtu = 0;
	__s64 diff;

	if (in->ip4.ihl != 5 || in->ip4.saddr != ep->ipv4)
		return DROP_NAT64_UNSUPPORTED;
	nat64_embed(&daddr, in->ip4.daddr);
	__builtin_memcpy(out->l4, in->l4, sizeof(out->l4));
	if (protocol == IPPROTO_UDP) {
		diff = bpf_csum_diff((__be32 *)&in->ip4.saddr, 8, (__be32 *)&ep->ipv6, 16, 0);
		diff = bpf_csum_diff(NULL, 0, daddr.p, 16, diff);
		nat64_udp_csum_apply(out->l4, diff);
	} else if (protocol == IPPROTO_ICMP) {
		__u8 type = in->l4[0], code = in->l4[1];

		if (type != ICMP_ECHO && type != ICMP_ECHOREPLY)
			return DROP_NAT64_UNSUPPORTED;
		nat64_icmp4_to6(&type, &code, &mtu);
		out->l4[0] = type;
		diff = nat64_pseudo6(&ep->ipv6, &daddr, payload, 1, 0);
		diff = nat64_type_diff(in->l4[0], in->l4[1], type, code, diff);
		nat64_csum_apply(out->l4, offsetof(struct icmphdr, checksum), diff);
		protocol = IPPROTO_ICMPV6;
	} else if (protocol != IPPROTO_TCP) {
		return DROP_NAT64_UNSUPPORTED;
	}
	nat64_ipv6_header(&out->ip6, payload, in->ip4.ttl, protocol, &ep->ipv6, &daddr,
			  in->ip4.tos);
	return 0;
}

/* Both rewrites change the EtherType the stack and the container read. */
static __always_inline int nat64_store_ethertype(struct __sk_buff *skb, __u16 proto)
{
	__be16 type = bpf_htons(proto);

	if (bpf_skb_store_bytes(skb, 2 * ETH_ALEN, &type, sizeof(type), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* An ICMPv6 error of the endpoint about a translated flow, as an ICMP error from its IPv4
 * side. Returns 0 or a drop reason. */
static __always_inline int nat64_error_to4(struct __sk_buff *skb, const struct endpoint_info *ep,
					   const struct ipv6hdr *ip6, const struct flow *f)
{
	struct nat64_error6 in;
	struct nat64_error4 out = {};
	struct iphdr outer;
	__u32 mtu;
	int ret;

	if (bpf_skb_load_bytes(skb, f->l4_off, &in, sizeof(in)) < 0)
		return DROP_INVALID_PACKET;
	out.icmp.type = in.icmp6.icmp6_type;
	out.icmp.code = in.icmp6.icmp6_code;
	mtu = bpf_ntohl(in.icmp6.icmp6_dataun.un_data32[0]);
	ret = nat64_icmp6_to4(&out.icmp.type, &out.icmp.code, &mtu);
	if (ret < 0)
		return ret;
	if (out.icmp.type == ICMP_DEST_UNREACH && out.icmp.code == ICMP_FRAG_NEEDED)
		out.icmp.un.frag.mtu = bpf_htons(mtu);
	ret = nat64_quote_to4(ep, &in.quote, &out.quote);
	if (ret < 0)
		return ret;
	out.icmp.checksum = csum_fold32((__u32)bpf_csum_diff(NULL, 0, (__be32 *)&out,
							     sizeof(out), 0));
	nat64_ipv4_header(&outer, sizeof(out), ip6->hop_limit, IPPROTO_ICMP, ep->ipv4,
			  f->daddr.p[3], nat64_tos(ip6));
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IP), 0) < 0 ||
	    bpf_skb_change_tail(skb, ICMP4_L4_OFF + sizeof(out), 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV4_HDR_OFF, &outer, sizeof(outer), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ICMP4_L4_OFF, &out, sizeof(out), 0) < 0)
		return DROP_WRITE_FAILED;
	return nat64_store_ethertype(skb, ETH_P_IP);
}

/* The endpoint's IPv6 packet to NAT64_PREFIX::a.b.c.d, as IPv4 from ep->ipv4 to a.b.c.d.
 * Conntrack and policy have admitted it. Returns 0 or a drop reason. */
static __always_inline int nat64_to4(struct __sk_buff *skb, const struct endpoint_info *ep,
				     const struct ipv6hdr *ip6, const struct flow *f)
{
	__u16 payload = bpf_ntohs(ip6->payload_len);
	__u32 l4_off4 = ICMP4_L4_OFF;
	__u8 protocol = f->protocol;
	__be32 addrs4[2] = { ep->ipv4, f->daddr.p[3] };
	struct icmp6hdr icmp6;
	struct iphdr ip4;
	__u8 type = 0, code = 0;
	__u32 mtu = 0;
	__s64 diff;

	if (f->icmp == FLOW_ICMP_ERROR)
		return nat64_error_to4(skb, ep, ip6, f);
	if (protocol == IPPROTO_ICMPV6) {
		if (bpf_skb_load_bytes(skb, f->l4_off, &icmp6, sizeof(icmp6)) < 0)
			return DROP_INVALID_PACKET;
		type = icmp6.icmp6_type;
		code = icmp6.icmp6_code;
		if (f->icmp != FLOW_ICMP_ECHO_REQUEST && f->icmp != FLOW_ICMP_ECHO_REPLY)
			return DROP_NAT64_UNSUPPORTED;
		nat64_icmp6_to4(&type, &code, &mtu);
		diff = nat64_pseudo6(&f->saddr, &f->daddr, payload, 0, 0);
		diff = nat64_type_diff(icmp6.icmp6_type, icmp6.icmp6_code, type, code, diff);
		protocol = IPPROTO_ICMP;
	} else {
		diff = bpf_csum_diff((__be32 *)&ip6->saddr, 32, addrs4, sizeof(addrs4), 0);
	}
	nat64_ipv4_header(&ip4, payload, ip6->hop_limit, protocol, ep->ipv4, f->daddr.p[3],
			  nat64_tos(ip6));
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IP), 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4), 0) < 0)
		return DROP_WRITE_FAILED;
	if (protocol == IPPROTO_ICMP) {
		if (bpf_l4_csum_replace(skb, l4_off4 + offsetof(struct icmphdr, checksum), 0, diff,
					0) < 0 ||
		    bpf_skb_store_bytes(skb, l4_off4, &type, sizeof(type), 0) < 0)
			return DROP_WRITE_FAILED;
	} else if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) {
		__u32 off = l4_off4 + (protocol == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							      : offsetof(struct udphdr, check));
		__u64 flags = BPF_F_PSEUDO_HDR |
			      (protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);

		if (bpf_l4_csum_replace(skb, off, 0, diff, flags) < 0)
			return DROP_WRITE_FAILED;
	}
	return nat64_store_ethertype(skb, ETH_P_IP);
}

/* Before conntrack and policy: what the translation refuses leaves no entry behind.
 * Returns 0 or a drop reason. */
static __always_inline int nat64_egress_check(const struct endpoint_info *ep, const struct flow *f)
{
	if (!ep->ipv4 || f->l4_off != IPV6_L4_OFF)
		return DROP_NAT64_UNSUPPORTED;
	if (f->protocol != IPPROTO_TCP && f->protocol != IPPROTO_UDP &&
	    f->protocol != IPPROTO_ICMPV6)
		return DROP_NAT64_UNSUPPORTED;
	return 0;
}

/* An ICMP error for the endpoint's IPv4 side, as an ICMPv6 error for the endpoint.
 * Returns 0 or a drop reason. */
static __always_inline int nat64_error_to6(struct __sk_buff *skb, const struct endpoint_info *ep,
					   const struct iphdr *ip4)
{
	struct nat64_error4 in;
	struct nat64_error6 out = {};
	struct ipv6hdr outer;
	union v6addr saddr;
	__u32 mtu;
	__s64 sum;
	int ret;

	if (bpf_skb_load_bytes(skb, ICMP4_L4_OFF, &in, sizeof(in)) < 0)
		return DROP_INVALID_PACKET;
	out.icmp6.icmp6_type = in.icmp.type;
	out.icmp6.icmp6_code = in.icmp.code;
	mtu = bpf_ntohs(in.icmp.un.frag.mtu);
	ret = nat64_icmp4_to6(&out.icmp6.icmp6_type, &out.icmp6.icmp6_code, &mtu);
	if (ret < 0)
		return ret;
	if (out.icmp6.icmp6_type == ICMPV6_PKT_TOOBIG)
		out.icmp6.icmp6_dataun.un_data32[0] = bpf_htonl(mtu);
	ret = nat64_quote_to6(ep, &in.quote, &out.quote);
	if (ret < 0)
		return ret;
	nat64_embed(&saddr, ip4->saddr);
	sum = nat64_pseudo6(&saddr, &ep->ipv6, sizeof(out), 1, 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&out, sizeof(out), sum);
	out.icmp6.icmp6_cksum = nat64_fold(sum);
	nat64_ipv6_header(&outer, sizeof(out), ip4->ttl, IPPROTO_ICMPV6, &saddr, &ep->ipv6,
			  ip4->tos);
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0) < 0 ||
	    bpf_skb_change_tail(skb, IPV6_L4_OFF + sizeof(out), 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV6_HDR_OFF, &outer, sizeof(outer), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IPV6_L4_OFF, &out, sizeof(out), 0) < 0)
		return DROP_WRITE_FAILED;
	return nat64_store_ethertype(skb, ETH_P_IPV6);
}

/* An IPv4 packet for the endpoint's IPv4 side, as IPv6 from NAT64_PREFIX::source to the
 * endpoint. Returns 0 or a drop reason. */
static __always_inline int nat64_to6(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct iphdr ip4;
	struct ipv6hdr ip6;
	union v6addr saddr;
	__u8 l4[L4_HEAD_LEN];
	__u16 payload;
	__u8 protocol, type = 0, code = 0;
	__u32 mtu = 0;
	__s64 diff;

	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
		return DROP_INVALID_PACKET;
	if (ipv4_is_fragment(&ip4))
		return DROP_FRAG_IPV4;
	if (ip4.ihl != 5)
		return DROP_NAT64_UNSUPPORTED;
	payload = bpf_ntohs(ip4.tot_len);
	if (payload < sizeof(ip4) + L4_HEAD_LEN ||
	    bpf_skb_load_bytes(skb, ICMP4_L4_OFF, l4, sizeof(l4)) < 0)
		return DROP_INVALID_PACKET;
	payload -= sizeof(ip4);
	protocol = ip4.protocol;
	nat64_embed(&saddr, ip4.saddr);
	if (protocol == IPPROTO_ICMP) {
		type = l4[0];
		code = l4[1];
		if (icmp4_class(type) == FLOW_ICMP_ERROR)
			return nat64_error_to6(skb, ep, &ip4);
		if (type != ICMP_ECHO && type != ICMP_ECHOREPLY)
			return DROP_NAT64_UNSUPPORTED;
		nat64_icmp4_to6(&type, &code, &mtu);
		diff = nat64_pseudo6(&saddr, &ep->ipv6, payload, 1, 0);
		diff = nat64_type_diff(l4[0], l4[1], type, code, diff);
		protocol = IPPROTO_ICMPV6;
	} else if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) {
		/* IPv6 has no "no checksum": one would have to be computed over the payload. */
		if (protocol == IPPROTO_UDP && !(l4[6] | l4[7]))
			return DROP_NAT64_UNSUPPORTED;
		diff = bpf_csum_diff(&ip4.saddr, 8, saddr.p, 16, 0);
		diff = bpf_csum_diff(NULL, 0, (__be32 *)&ep->ipv6, 16, diff);
	} else {
		return DROP_NAT64_UNSUPPORTED;
	}
	nat64_ipv6_header(&ip6, payload, ip4.ttl, protocol, &saddr, &ep->ipv6, ip4.tos);
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0) < 0)
		return DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6), 0) < 0)
		return DROP_WRITE_FAILED;
	if (protocol == IPPROTO_ICMPV6) {
		if (bpf_l4_csum_replace(skb, IPV6_L4_OFF + offsetof(struct icmp6hdr, icmp6_cksum),
					0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, IPV6_L4_OFF, &type, sizeof(type), 0) < 0)
			return DROP_WRITE_FAILED;
	} else {
		__u32 off = IPV6_L4_OFF + (protocol == IPPROTO_TCP ? offsetof(struct tcphdr, check)
								  : offsetof(struct udphdr, check));
		/* The helper leaves a 0 alone under MARK_MANGLED_0, but a TCP checksum of 0 is
		 * a value like any other. */
		__u64 flags = BPF_F_PSEUDO_HDR |
			      (protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);

		if (bpf_l4_csum_replace(skb, off, 0, diff, flags) < 0)
			return DROP_WRITE_FAILED;
	}
	return nat64_store_ethertype(skb, ETH_P_IPV6);
}

#endif
