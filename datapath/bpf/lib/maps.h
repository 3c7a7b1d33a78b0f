/* Map accessors. The maps are created and pinned by datapath/maps/, which passes
 * their file descriptors to the compile as -D<NAME>_MAP_FD=<fd>; bpf_pseudo_fd turns
 * them into map references when the program is loaded.
 */
#ifndef PYCILIUM_MAPS_H
#define PYCILIUM_MAPS_H

#include "common.h"

static __always_inline struct endpoint_info *endpoint_lookup(__u32 ifindex)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, ENDPOINTS_MAP_FD), &ifindex);
}

static __always_inline struct endpoint_addr *endpoint_addr_lookup(const struct endpoint_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, ENDPOINT_ADDRS_MAP_FD), (void *)key);
}

static __always_inline void drop_count_inc(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, DROP_COUNTS_MAP_FD), &index);

	if (count)
		*count += 1;	/* per-CPU slot: no atomics needed */
}

static __always_inline void trace_count_inc(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, TRACE_COUNTS_MAP_FD), &index);

	if (count)
		*count += 1;
}

static __always_inline struct policy_entry *policy_lookup(const struct policy_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, POLICY_MAP_FD), (void *)key);
}

static __always_inline struct ct_entry *ct_entry_lookup(const struct ct_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, CONNTRACK_MAP_FD), (void *)key);
}

static __always_inline void ct_entry_update(const struct ct_key *key, const struct ct_entry *entry)
{
	bpf_map_update_elem((void *)bpf_pseudo_fd(1, CONNTRACK_MAP_FD), (void *)key, (void *)entry,
			    BPF_ANY);
}

static __always_inline struct lb_service *lb_service_lookup(const struct lb_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, LB_SERVICES_MAP_FD), (void *)key);
}

static __always_inline struct lb_addr *lb_slot_lookup(const struct lb_slot_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, LB_SLOTS_MAP_FD), (void *)key);
}

static __always_inline struct lb_addr *lb_revnat_lookup(__u16 service_id)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, LB_REVNAT_MAP_FD), &service_id);
}

static __always_inline struct lb_flow *lb_flow_lookup(const struct ct_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, LB_FLOWS_MAP_FD), (void *)key);
}

static __always_inline void lb_flow_update(const struct ct_key *key, const struct lb_flow *flow)
{
	bpf_map_update_elem((void *)bpf_pseudo_fd(1, LB_FLOWS_MAP_FD), (void *)key, (void *)flow,
			    BPF_ANY);
}

static __always_inline __u32 *cidr4_lookup(const struct cidr4_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, CIDR4_MAP_FD), (void *)key);
}

static __always_inline __u32 *cidr6_lookup(const struct cidr6_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, CIDR6_MAP_FD), (void *)key);
}

static __always_inline __u32 config_flags(void)
{
	__u32 slot = 0;
	struct datapath_config *config =
		bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, CONFIG_MAP_FD), &slot);

	return config ? config->flags : 0;
}

static __always_inline void *event_reserve(void)
{
	return bpf_ringbuf_reserve((void *)bpf_pseudo_fd(1, EVENTS_MAP_FD),
				   sizeof(struct datapath_event), 0);
}

static __always_inline __u32 *prefilter4_lookup(const struct cidr4_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, PREFILTER4_MAP_FD), (void *)key);
}

static __always_inline __u32 *prefilter6_lookup(const struct cidr6_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, PREFILTER6_MAP_FD), (void *)key);
}

static __always_inline struct flow_limit *flow_limit_lookup(void)
{
	__u32 slot = 0;

	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, FLOW_LIMIT_MAP_FD), &slot);
}

static __always_inline struct flow_budget *flow_budget_lookup(void)
{
	__u32 slot = 0;

	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, FLOW_BUDGET_MAP_FD), &slot);
}

static __always_inline __u64 *flow_count_lookup(const struct flow_count_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, FLOW_COUNTS_MAP_FD), (void *)key);
}

static __always_inline int flow_count_insert(const struct flow_count_key *key)
{
	__u64 one = 1;	/* on this CPU; a new per-CPU element is zero on the others */

	return bpf_map_update_elem((void *)bpf_pseudo_fd(1, FLOW_COUNTS_MAP_FD), (void *)key,
				   &one, BPF_NOEXIST);
}

static __always_inline struct prefilter_count *prefilter_count_lookup(__u32 id)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, PREFILTER_DROPS_MAP_FD), &id);
}

static __always_inline struct ipcache_entry *ipcache_lookup(const struct endpoint_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, IPCACHE_MAP_FD), (void *)key);
}

static __always_inline struct addr4_port *nodeport4_lookup(const struct nodeport_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, NODEPORT4_MAP_FD), (void *)key);
}

static __always_inline struct addr4_port *dsr4_lookup(const struct dsr_key *key)
{
	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, DSR4_MAP_FD), (void *)key);
}

static __always_inline int dsr4_update(const struct dsr_key *key, const struct addr4_port *entry)
{
	return bpf_map_update_elem((void *)bpf_pseudo_fd(1, DSR4_MAP_FD), (void *)key,
				   (void *)entry, BPF_ANY);
}

static __always_inline __u32 tunnel_ifindex(void)
{
	__u32 slot = 0;
	__u32 *ifindex = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, TUNNEL_MAP_FD), &slot);

	return ifindex ? *ifindex : 0;
}

#endif
