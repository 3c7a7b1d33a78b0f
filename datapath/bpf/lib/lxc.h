/* What happens to a packet leaving a container, per protocol. */
#ifndef PYCILIUM_LXC_H
#define PYCILIUM_LXC_H

#include "arp.h"
#include "icmp4.h"
#include "icmp6.h"
#include "local.h"
#include "ndisc.h"
#include "spoof.h"

static __always_inline int lxc_handle6(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct ipv6hdr ip6;
	int ret;

	if (bpf_skb_load_bytes(skb, IPV6_HDR_OFF, &ip6, sizeof(ip6)) < 0)
		return DROP_INVALID_PACKET;
	ret = spoof_check6(ep, &ip6, ipv6_l4_proto(skb, &ip6));
	if (ret < 0)
		return ret;
	if (ip6.nexthdr == IPPROTO_ICMPV6) {
		ret = ndisc_answer6(skb, ep, &ip6);
		if (ret != CTX_CONTINUE)
			return ret;
		ret = icmp6_echo_reply(skb, ep, &ip6);
		if (ret != CTX_CONTINUE)
			return ret;
	}
	ret = redirect_local6(skb, &ip6);
	if (ret != CTX_CONTINUE)
		return ret;
	return trace_exit(TRACE_TO_STACK, TC_ACT_OK);
}

static __always_inline int lxc_handle4(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct iphdr ip4;
	int ret;

	if (bpf_skb_load_bytes(skb, IPV4_HDR_OFF, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
		return DROP_INVALID_PACKET;
	ret = spoof_check4(ep, ip4.saddr);
	if (ret < 0)
		return ret;
	ret = icmp4_echo_reply(skb, ep, &ip4);
	if (ret != CTX_CONTINUE)
		return ret;
	ret = redirect_local4(skb, &ip4);
	if (ret != CTX_CONTINUE)
		return ret;
	return trace_exit(TRACE_TO_STACK, TC_ACT_OK);
}

/* Returns a TC verdict or a drop reason. */
static __always_inline int lxc_handle(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	int ret = spoof_check_mac(skb, ep);

	if (ret < 0)
		return ret;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lxc_handle6(skb, ep);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return lxc_handle4(skb, ep);
	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return arp_answer4(skb, ep);
	return DROP_UNKNOWN_L3;
}

#endif
