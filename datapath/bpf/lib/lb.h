/* Service load balancing on the from-container hook, before conntrack and policy.
 *
 * A packet to a frontend (VIP, port, protocol; else the VIP's L3-only frontend) has its
 * destination rewritten to a backend slot picked by a hash of its flow. The pick is kept
 * in lb_flows under the client's tuple, so every packet of a flow reaches the same backend
 * whatever happens to the slots later. Conntrack and policy then see the backend: its
 * address, its identity, its ingress policy. The client's egress conntrack entry carries
 * the service id, and the reply's source is rewritten back to the frontend at the
 * client's to-container hook (lb_rev_nat); an ICMP error about the flow (conntrack finds
 * it related and hands over the service) gets its quote rewritten to the frontend there.
 *
 * Hairpin: a client that is a backend of the VIP it calls gets its own packet with the
 * VIP as source, since Linux drops packets arriving from its own address. Its reply,
 * addressed to the VIP, is recognised by conntrack before any service lookup and goes
 * straight back in as frontend -> client.
 *
 * VIPs come only from the service ranges (the loader passes them as SERVICE6_W0..3 and
 * SERVICE6_M0..3, SERVICE4_W and SERVICE4_M: address and mask words), so a packet to any
 * other destination, most of them, costs neither service lookup nor hairpin lookup.
 */
#ifndef PYCILIUM_LB_H
#define PYCILIUM_LB_H

#include "conntrack.h"
#include "identity.h"
#include "nat.h"
#include "nat64.h"

#define LB_HASH_MUL 0x9e3779b1U	/* 2^32 / golden ratio */

#ifndef SERVICE4_W		/* the loader's service_range_flags(): the ranges are the driver's */
#error "SERVICE6_W0..3, SERVICE6_M0..3, SERVICE4_W and SERVICE4_M must be defined"
#endif

static __always_inline int lb_in_service_range(const struct flow *f)
{
	const union v6addr *a = &f->daddr;

	if (f->family == ENDPOINT_KEY_IPV4)
		return (a->p[0] & bpf_htonl(SERVICE4_M)) == bpf_htonl(SERVICE4_W);
	return (a->p[0] & bpf_htonl(SERVICE6_M0)) == bpf_htonl(SERVICE6_W0) &&
	       (a->p[1] & bpf_htonl(SERVICE6_M1)) == bpf_htonl(SERVICE6_W1) &&
	       (a->p[2] & bpf_htonl(SERVICE6_M2)) == bpf_htonl(SERVICE6_W2) &&
	       (a->p[3] & bpf_htonl(SERVICE6_M3)) == bpf_htonl(SERVICE6_W3);
}

/* TCP, UDP and echo requests are balanced; anything else to a VIP goes on untouched. */
static __always_inline int lb_balances(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP ||
	       f->icmp == FLOW_ICMP_ECHO_REQUEST;
}

/* The service of the packet's destination: the L4 frontend, else the L3-only one. */
static __always_inline struct lb_service *lb_service_find(const struct flow *f)
{
	struct lb_key key = { .addr = f->daddr, .family = f->family };
	struct lb_service *svc;

	if (!lb_in_service_range(f))
		return NULL;
	if (f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP) {
		key.port = f->dport;
		key.protocol = f->protocol;
		svc = lb_service_lookup(&key);
		if (svc)
			return svc;
		key.port = 0;
		key.protocol = 0;
	}
	return lb_service_lookup(&key);
}

static __always_inline __u32 lb_mix(__u32 hash, __u32 word)
{
	hash = (hash ^ word) * LB_HASH_MUL;
	return hash ^ (hash >> 15);
}

/* A hash of the 5-tuple: the same for every packet of a flow, spread over flows. */
static __always_inline __u32 lb_flow_hash(const struct flow *f)
{
	__u32 hash = f->protocol;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		hash = lb_mix(hash, f->saddr.p[i]);
		hash = lb_mix(hash, f->daddr.p[i]);
	}
	hash = lb_mix(hash, (__u32)f->sport << 16 | f->dport);
	return hash ^ (hash >> 16);
}

/* Expiry of a flow's pick, as conntrack would set it after this packet. */
static __always_inline __u32 lb_flow_expiry(const struct flow *f, __u32 now)
{
	__u16 flags = 0;

	if (f->protocol == IPPROTO_TCP && !tcp_is_syn(f))
		flags |= CT_F_SEEN_REPLY;
	if (tcp_is_closing(f))
		flags |= CT_F_TX_CLOSING;
	return now + ct_lifetime(f->protocol, flags);
}

/* The flow's backend: the one it was given (kept under picker, the client endpoint's id),
 * else a slot picked by its hash (a TCP SYN always picks: a reused tuple is a new
 * connection). Returns 0 or a drop reason.
 */
static __always_inline int lb_select(const struct flow *f, __u16 picker,
				     const struct lb_service *svc, struct lb_flow *out)
{
	struct lb_slot_key slot = { .service_id = svc->id };
	struct ct_key key = {};
	struct lb_flow *known;
	struct lb_addr *backend;
	__u32 now = ct_now();

	ct_key_fill(&key, f, picker, DIR_EGRESS, 0);
	known = lb_flow_lookup(&key);
	if (known && known->lifetime >= now && known->service_id == svc->id && !tcp_is_syn(f)) {
		known->lifetime = lb_flow_expiry(f, now);
		*out = *known;
		return 0;
	}
	if (!svc->count)
		return DROP_NO_SERVICE_BACKEND;
	slot.slot = lb_flow_hash(f) % svc->count;
	backend = lb_slot_lookup(&slot);
	if (!backend)
		return DROP_NO_SERVICE_BACKEND;
	out->backend = backend->addr;
	out->backend_port = backend->port;
	out->service_id = svc->id;
	out->lifetime = lb_flow_expiry(f, now);
	lb_flow_update(&key, out);
	return 0;
}

static __always_inline int lb_is_self(const struct endpoint_info *ep, const struct flow *f,
				      const union v6addr *addr)
{
	if (f->family == ENDPOINT_KEY_IPV6)
		return ipv6_addr_equals(addr, &ep->ipv6);
	return ep->ipv4 && addr->p[0] == ep->ipv4;
}

/* A packet to a frontend goes to its flow's backend (and, hairpinned, comes from the
 * VIP). ctx then holds the translated flow, the backend's identity and the service id.
 * Returns 0 or a drop reason.
 */
static __always_inline int lb_translate(struct __sk_buff *skb, const struct endpoint_info *ep,
					struct pkt_ctx *ctx)
{
	struct lb_flow chosen = {};
	struct lb_service *svc;
	union v6addr vip;
	int ret;

	if (!lb_balances(&ctx->flow))
		return 0;
	svc = lb_service_find(&ctx->flow);
	if (!svc)
		return 0;
	ret = lb_select(&ctx->flow, ctx->endpoint_id, svc, &chosen);
	if (ret < 0)
		return ret;
	vip = ctx->flow.daddr;
	ret = nat_rewrite(skb, &ctx->flow, NAT_DST, &chosen.backend, chosen.backend_port);
	if (ret < 0)
		return ret;
	ctx->rev_nat_index = chosen.service_id;
	identity_of_destination(ctx);
	if (!lb_is_self(ep, &ctx->flow, &ctx->flow.daddr))
		return 0;
	ctx->loopback = 1;
	return nat_store_addr(skb, &ctx->flow, NAT_SRC, &vip);
}

/* The reply of a hairpinned flow (this endpoint, as backend, to the VIP it saw as the
 * source) becomes frontend -> client, the client being this endpoint too. Returns 0 when
 * translated, CTX_CONTINUE if the packet is no such reply, or a drop reason.
 */
static __always_inline int lb_loopback_reply(struct __sk_buff *skb, const struct endpoint_info *ep,
					     struct pkt_ctx *ctx)
{
	struct ct_entry *entry;
	struct lb_addr *frontend;
	struct lb_addr front;
	union v6addr self = {};
	__u32 now;
	int ret;

	if (ctx->flow.protocol != IPPROTO_TCP && ctx->flow.protocol != IPPROTO_UDP &&
	    ctx->flow.icmp != FLOW_ICMP_ECHO_REPLY)
		return CTX_CONTINUE;
	if (!lb_in_service_range(&ctx->flow))	/* the reply goes to the VIP */
		return CTX_CONTINUE;
	now = ct_now();
	entry = ct_find(&ctx->flow, ctx->endpoint_id, DIR_EGRESS, 1, now);
	if (!entry || !(entry->flags & CT_F_LOOPBACK))
		return CTX_CONTINUE;
	frontend = lb_revnat_lookup(entry->rev_nat_index);
	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	ct_refresh(entry, ctx, skb->len, 1, now);
	if (ctx->flow.family == ENDPOINT_KEY_IPV6)
		self = ep->ipv6;
	else
		self.p[0] = ep->ipv4;
	ctx->loopback = 1;
	ret = nat_rewrite(skb, &ctx->flow, NAT_SRC, &front.addr, front.port);
	if (ret < 0)
		return ret;
	ret = nat_store_addr(skb, &ctx->flow, NAT_DST, &self);
	if (ret < 0)
		return ret;
	identity_of_destination(ctx);
	return 0;
}

/* The TCP checksum of the segment an ICMP error quotes, when the error quotes that much
 * (RFC 792 asks for 8 bytes, Linux sends up to 576 or 1280), follows the quote's change
 * diff; its own change is added to *icmp_diff. 0 is a TCP checksum like any other. Returns
 * 0 or a drop reason.
 */
static __always_inline int lb_quote_tcp_csum(struct __sk_buff *skb, __u32 tcp_off, __s64 diff,
					     __s64 *icmp_diff)
{
	__u32 off = tcp_off + offsetof(struct tcphdr, check);
	__be32 was = 0, now;	/* the checksum, then 0: bpf_csum_diff sums whole words */

	if (bpf_skb_load_bytes(skb, off, &was, sizeof(__sum16)) < 0)
		return 0;
	now = was;
	nat64_csum_apply((__u8 *)&now, 0, diff);
	*icmp_diff = bpf_csum_diff(&was, sizeof(was), &now, sizeof(now), *icmp_diff);
	if (bpf_skb_store_bytes(skb, off, &now, sizeof(__sum16), 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* The packet an IPv4 ICMP error (its header at icmp_off) quotes, an IPv4 header without
 * options as loaded into quote, gets addr and port (0: kept) as its source (NAT_SRC) or
 * destination; its header checksum, its TCP or UDP checksum (a UDP 0 stays "none") and the
 * ICMP checksum follow. Returns 0 or a drop reason.
 */
static __always_inline int lb_quote4_store(struct __sk_buff *skb, __u32 icmp_off,
					   struct nat64_quote4 *quote, int which, __be32 addr,
					   __u16 port)
{
	struct nat64_quote4 was = *quote;
	__u32 quote_off = icmp_off + sizeof(struct icmphdr);
	__u32 port_off = which == NAT_SRC ? 0 : 2;
	__u8 protocol = quote->ip4.protocol;
	__be16 to = bpf_htons(port);
	__s64 diff, icmp_diff;
	int ret;

	if (which == NAT_SRC)
		quote->ip4.saddr = addr;
	else
		quote->ip4.daddr = addr;
	if (port && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP))
		__builtin_memcpy(&quote->l4[port_off], &to, sizeof(to));
	quote->ip4.check = 0;
	quote->ip4.check = csum_fold32((__u32)bpf_csum_diff(NULL, 0, (__be32 *)&quote->ip4,
							    sizeof(quote->ip4), 0));
	diff = bpf_csum_diff(&was.ip4.saddr, 8, &quote->ip4.saddr, 8, 0);
	diff = bpf_csum_diff((__be32 *)was.l4, 4, (__be32 *)quote->l4, 4, diff);
	if (protocol == IPPROTO_UDP)
		nat64_udp_csum_apply(quote->l4, diff);
	icmp_diff = bpf_csum_diff((__be32 *)&was, sizeof(was), (__be32 *)quote, sizeof(*quote), 0);
	if (protocol == IPPROTO_TCP) {
		ret = lb_quote_tcp_csum(skb, quote_off + sizeof(quote->ip4), diff, &icmp_diff);
		if (ret < 0)
			return ret;
	}
	if (bpf_skb_store_bytes(skb, quote_off, quote, sizeof(*quote), 0) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_off + offsetof(struct icmphdr, checksum), 0, icmp_diff,
				0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* The same for an ICMPv6 error's quote (an IPv6 header, no extension headers), whose
 * destination becomes addr and port (0: kept); *was gets the destination it had. The
 * quoted TCP, UDP or echo checksum follows (over IPv6 a UDP 0 is invalid: left so), and
 * the ICMPv6 checksum. Returns 0 or a drop reason.
 */
static __always_inline int lb_quote6_store_dst(struct __sk_buff *skb, __u32 icmp_off,
					       const union v6addr *addr, __u16 port,
					       union v6addr *was_dst)
{
	__u32 quote_off = icmp_off + sizeof(struct icmp6hdr);
	struct nat64_quote6 quote, was;
	__be16 to = bpf_htons(port);
	__u8 protocol;
	__s64 diff, icmp_diff;
	int ret;

	if (bpf_skb_load_bytes(skb, quote_off, &quote, sizeof(quote)) < 0)
		return DROP_INVALID_PACKET;
	was = quote;
	protocol = quote.ip6.nexthdr;
	__builtin_memcpy(was_dst, &quote.ip6.daddr, sizeof(*was_dst));
	__builtin_memcpy(&quote.ip6.daddr, addr, sizeof(*addr));
	if (port && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP))
		__builtin_memcpy(&quote.l4[2], &to, sizeof(to));
	diff = bpf_csum_diff((__be32 *)&was.ip6.daddr, 16, (__be32 *)&quote.ip6.daddr, 16, 0);
	diff = bpf_csum_diff((__be32 *)was.l4, 4, (__be32 *)quote.l4, 4, diff);
	if (protocol == IPPROTO_UDP)
		nat64_udp_csum_apply(quote.l4, diff);
	else if (protocol == IPPROTO_ICMPV6)
		nat64_csum_apply(quote.l4, offsetof(struct icmp6hdr, icmp6_cksum), diff);
	icmp_diff = bpf_csum_diff((__be32 *)&was, sizeof(was), (__be32 *)&quote, sizeof(quote), 0);
	if (protocol == IPPROTO_TCP) {
		ret = lb_quote_tcp_csum(skb, quote_off + sizeof(quote.ip6), diff, &icmp_diff);
		if (ret < 0)
			return ret;
	}
	if (bpf_skb_store_bytes(skb, quote_off, &quote, sizeof(quote), 0) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_off + offsetof(struct icmp6hdr, icmp6_cksum), 0,
				icmp_diff, 0) < 0)
		return DROP_WRITE_FAILED;
	return 0;
}

/* An ICMP error into a client about its load-balanced flow quotes client -> backend, the
 * packet as the datapath sent it on. As Linux's conntrack NAT does, the quote becomes
 * client -> frontend, so that the socket connected to the frontend gets the error. The
 * backend's own error comes from the frontend; a router's on the way keeps its address (a
 * hop of a traceroute), where Linux would give it the frontend's too. A quoted IPv4 header
 * with options is left as it is. Returns 0 or a drop reason.
 */
static __always_inline int lb_error_rev_nat(struct __sk_buff *skb, struct pkt_ctx *ctx,
					    const struct lb_addr *front)
{
	struct nat64_quote4 quote4;
	union v6addr backend = {};
	int ret;

	if (ctx->flow.family == ENDPOINT_KEY_IPV6) {
		ret = lb_quote6_store_dst(skb, ctx->flow.l4_off, &front->addr, front->port,
					  &backend);
	} else {
		if (bpf_skb_load_bytes(skb, ctx->flow.l4_off + sizeof(struct icmphdr), &quote4,
				       sizeof(quote4)) < 0)
			return DROP_INVALID_PACKET;
		if (quote4.ip4.ihl != 5)
			return 0;
		backend.p[0] = quote4.ip4.daddr;
		ret = lb_quote4_store(skb, ctx->flow.l4_off, &quote4, NAT_DST, front->addr.p[0],
				      front->port);
	}
	if (ret < 0)
		return ret;
	if (!ipv6_addr_equals(&ctx->flow.saddr, &backend))
		return 0;
	return nat_store_addr(skb, &ctx->flow, NAT_SRC, &front->addr);
}

/* Into a client: a reply of a load-balanced flow comes from the frontend it called, and an
 * ICMP error about the flow quotes it as sent to the frontend (a NAT46 flow into its
 * backend is no reply). Returns 0 or a drop reason.
 */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct lb_addr *frontend;
	struct lb_addr front;

	if (!ctx->rev_nat_index || ctx->nat46)
		return 0;
	frontend = lb_revnat_lookup(ctx->rev_nat_index);
	if (!frontend)
		return DROP_NO_REV_NAT;
	front = *frontend;
	if (ctx->flow.icmp == FLOW_ICMP_ERROR)
		return lb_error_rev_nat(skb, ctx, &front);
	return nat_rewrite(skb, &ctx->flow, NAT_SRC, &front.addr, front.port);
}

#endif
