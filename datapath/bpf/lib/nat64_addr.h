/* NAT64 addresses (RFC 6052, a /96 prefix): NAT64_PREFIX::a.b.c.d stands for IPv4 a.b.c.d.
 * The loader passes the prefix as NAT64_PREFIX_W0..W2, its three leading 32-bit words.
 */
#ifndef PYCILIUM_NAT64_ADDR_H
#define PYCILIUM_NAT64_ADDR_H

#include "common.h"

#ifndef NAT64_PREFIX_W0		/* 64:ff9b::/96 unless the loader says otherwise */
#define NAT64_PREFIX_W0 0x0064ff9b
#define NAT64_PREFIX_W1 0
#define NAT64_PREFIX_W2 0
#endif

static __always_inline int nat64_in_prefix(const union v6addr *a)
{
	return a->p[0] == bpf_htonl(NAT64_PREFIX_W0) && a->p[1] == bpf_htonl(NAT64_PREFIX_W1) &&
	       a->p[2] == bpf_htonl(NAT64_PREFIX_W2);
}

static __always_inline void nat64_embed(union v6addr *out, __be32 addr4)
{
	out->p[0] = bpf_htonl(NAT64_PREFIX_W0);
	out->p[1] = bpf_htonl(NAT64_PREFIX_W1);
	out->p[2] = bpf_htonl(NAT64_PREFIX_W2);
	out->p[3] = addr4;
}

/* The key an address is known by for identity and ownership: a NAT64 address by the IPv4
 * address it stands for, so that a translated flow has the identity of its IPv4 peer (a
 * local endpoint's, the host's, a CIDR's or the world's), never one of its own. */
static __always_inline void nat64_addr_key(struct endpoint_key *key, const union v6addr *addr,
					   __u8 family)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (family == ENDPOINT_KEY_IPV6 && nat64_in_prefix(addr)) {
		key->ip.p[0] = addr->p[3];
		key->family = ENDPOINT_KEY_IPV4;
		return;
	}
	key->ip = *addr;
	key->family = family;
}

#endif
