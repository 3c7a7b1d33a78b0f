/* Connection tracking: one LRU map for both families and both hooks. An entry is keyed
 * by the endpoint and direction of the hook that admitted the flow, with the tuple as
 * that first packet had it; replies are found under the opposite direction with the
 * tuple reversed. Expired entries count as missing.
 */
#ifndef PYCILIUM_CONNTRACK_H
#define PYCILIUM_CONNTRACK_H

#include "flow.h"
#include "maps.h"
#include "nat64_addr.h"

/* Lifetimes in seconds. */
#define CT_LIFETIME_TCP 21600		/* established TCP */
#define CT_LIFETIME_SYN 60		/* TCP before the first reply */
#define CT_LIFETIME_CLOSING 10		/* TCP after FIN or RST */
#define CT_LIFETIME_NONTCP 60		/* UDP, ICMP echo */

#define CT_NSEC_PER_SEC 1000000000ULL

enum ct_status {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,	/* same direction as the packet that made the entry */
	CT_REPLY = 2,
	CT_RELATED = 3,		/* an ICMP error about a tracked flow */
};

static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_ns() / CT_NSEC_PER_SEC;
}

static __always_inline void ct_key_fill(struct ct_key *key, const struct flow *f,
					__u16 endpoint_id, __u8 direction, int reverse)
{
	if (reverse) {
		key->saddr = f->daddr;
		key->daddr = f->saddr;
		key->sport = f->dport;
		key->dport = f->sport;
	} else {
		key->saddr = f->saddr;
		key->daddr = f->daddr;
		key->sport = f->sport;
		key->dport = f->dport;
	}
	key->endpoint_id = endpoint_id;
	key->protocol = f->protocol;
	key->direction = direction;
	key->family = f->family;
}

static __always_inline __u32 ct_lifetime(__u8 protocol, __u16 flags)
{
	if (protocol != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		return CT_LIFETIME_CLOSING;
	if (!(flags & CT_F_SEEN_REPLY))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

static __always_inline int tcp_is_closing(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP && (f->tcp_flags & (TCP_F_FIN | TCP_F_RST));
}

static __always_inline int tcp_is_syn(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP && (f->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN;
}

/* A live entry for the flow as seen from (endpoint_id, direction), or NULL. */
static __always_inline struct ct_entry *ct_find(const struct flow *f, __u16 endpoint_id,
						__u8 direction, int reverse, __u32 now)
{
	struct ct_key key = {};
	struct ct_entry *entry;

	ct_key_fill(&key, f, endpoint_id, direction, reverse);
	entry = ct_entry_lookup(&key);
	if (!entry || entry->lifetime < now)
		return NULL;
	return entry;
}

static __always_inline void ct_refresh(struct ct_entry *entry, const struct pkt_ctx *ctx,
				       __u32 len, int reply, __u32 now)
{
	__u16 flags = entry->flags;

	if (reply)
		flags |= CT_F_SEEN_REPLY;
	if (tcp_is_closing(&ctx->flow))
		flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
	entry->flags = flags;
	entry->lifetime = now + ct_lifetime(ctx->flow.protocol, flags);
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, len);
}

/* Whether an ICMP error comes from an endpoint other than the peer its quoted packet was
 * sent to (for a service flow, the backend): an endpoint reports only on packets it was
 * sent, so such an error is a forgery to be judged by policy. The sender is an endpoint
 * when it came out of a local endpoint's veth (whatever its source address: a link-local
 * one is allowed on ICMPv6, and a local endpoint's address from elsewhere was already
 * dropped as forged), or when its address is a local endpoint's or an endpoint's of
 * another node (ipcache, endpoint identity; a node's own address there is the world's).
 * Routers, hosts and the world may report on any flow they carry.
 */
static __always_inline int ct_error_from_bystander(const struct __sk_buff *skb,
						   const struct flow *f, const struct flow *quoted)
{
	struct endpoint_key key;
	struct ipcache_entry *remote;

	if (ipv6_addr_equals(&f->saddr, &quoted->daddr))
		return 0;
	if (endpoint_lookup(skb->ingress_ifindex))
		return 1;
	nat64_addr_key(&key, &f->saddr, f->family);
	if (endpoint_addr_lookup(&key))
		return 1;
	remote = ipcache_lookup(&key);
	return remote && remote->identity >= FIRST_ENDPOINT_IDENTITY &&
	       remote->identity < FIRST_CIDR_IDENTITY;
}

/* An ICMP error passes when the packet it quotes belongs to a tracked flow of this
 * endpoint, in either direction, and it comes from no other endpoint than that packet's
 * destination (ct_error_from_bystander). One that quotes a packet of the flow's first
 * direction takes the service of the flow's entry into ctx (lb_rev_nat): into a client,
 * an error about its load-balanced flow; out of a NAT46 backend, one about a NAT46 flow.
 * Returns CT_RELATED, CT_NEW or a drop reason.
 */
static __always_inline int ct_lookup_related(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	struct flow quoted = {};
	struct ct_entry *entry;
	__u32 now = ct_now();
	int ret = flow_parse_quoted(skb, &ctx->flow, &quoted);

	if (ret < 0)
		return ret;
	/* The quoted packet went the other way: reversed, it is a packet of this direction. */
	if (ct_find(&quoted, ctx->endpoint_id, ctx->direction, 1, now))
		return ct_error_from_bystander(skb, &ctx->flow, &quoted) ? CT_NEW : CT_RELATED;
	entry = ct_find(&quoted, ctx->endpoint_id, !ctx->direction, 0, now);
	if (!entry || ct_error_from_bystander(skb, &ctx->flow, &quoted))
		return CT_NEW;
	ctx->rev_nat_index = entry->rev_nat_index;
	return CT_RELATED;
}

/* Returns an enum ct_status or a drop reason; refreshes the entry it finds. A TCP SYN
 * is always new, so that policy decides again when a closed flow's tuple is reused.
 * A reply takes the rev_nat_index of its flow's entry into ctx, as does an ICMP error
 * about the flow's first direction.
 */
static __always_inline int ct_lookup(struct __sk_buff *skb, struct pkt_ctx *ctx)
{
	const struct flow *f = &ctx->flow;
	struct ct_entry *entry;
	__u32 now;

	if (f->icmp == FLOW_ICMP_ERROR)
		return ct_lookup_related(skb, ctx);
	if (tcp_is_syn(f))
		return CT_NEW;
	now = ct_now();
	entry = ct_find(f, ctx->endpoint_id, ctx->direction, 0, now);
	if (entry) {
		ct_refresh(entry, ctx, skb->len, 0, now);
		return CT_ESTABLISHED;
	}
	entry = ct_find(f, ctx->endpoint_id, !ctx->direction, 1, now);
	if (entry) {
		ct_refresh(entry, ctx, skb->len, 1, now);
		ctx->rev_nat_index = entry->rev_nat_index;
		return CT_REPLY;
	}
	return CT_NEW;
}

static __always_inline int ct_tracks(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP ||
	       f->icmp == FLOW_ICMP_ECHO_REQUEST;
}

/* Track a new flow that policy admitted, with the service it was translated for. A TCP
 * flow first seen past its SYN (it predates the driver) is taken as established.
 */
static __always_inline void ct_create(struct __sk_buff *skb, const struct pkt_ctx *ctx)
{
	const struct flow *f = &ctx->flow;
	struct ct_entry entry = {
		.packets = 1,
		.bytes = skb->len,
		.rev_nat_index = ctx->rev_nat_index,
	};
	struct ct_key key = {};

	if (!ct_tracks(f))
		return;
	if (f->protocol == IPPROTO_TCP && !tcp_is_syn(f))
		entry.flags = CT_F_SEEN_REPLY;
	if (tcp_is_closing(f))
		entry.flags |= CT_F_TX_CLOSING;
	if (ctx->loopback)
		entry.flags |= CT_F_LOOPBACK;
	entry.lifetime = ct_now() + ct_lifetime(f->protocol, entry.flags);
	ct_key_fill(&key, f, ctx->endpoint_id, ctx->direction, 0);
	ct_entry_update(&key, &entry);
}

#endif
