"""Every map of the datapath: name, type, layout and capacity. lib/maps.h expects
-D<NAME>_MAP_FD for each."""

import ctypes as ct
from dataclasses import dataclass

from .. import reasons
from ..abi import (
    PREFILTER_MAX,
    Addr4PortC,
    Cidr4Key,
    Cidr6Key,
    ConfigC,
    CtEntryC,
    CtKeyC,
    DsrKeyC,
    EndpointAddr,
    EndpointInfo,
    EndpointKey,
    FlowBudgetC,
    FlowCountKeyC,
    FlowLimitC,
    IpcacheEntryC,
    LbAddrC,
    LbFlowC,
    LbKeyC,
    LbServiceC,
    LbSlotKeyC,
    NodeportKeyC,
    PolicyEntryC,
    PolicyKeyC,
    PrefilterCountC,
    RetiredC,
)
from .pinned import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_HASH,
    BPF_MAP_TYPE_RINGBUF,
    MapSpec,
)

# Capacities. Changing one makes start() refuse the old pinned map (see PinnedMap._check_layout).
CIDR_MAP_SIZE = 16384  # prefixes per family
EVENTS_RING_BYTES = 1 << 20  # ring buffer of drop and trace events; a power of 2 pages
LB_SLOT_MAP_SIZE = 65536  # backend slots of all services together
LB_FLOW_MAP_SIZE = 65536  # flows' backend picks (LRU: the oldest go first when full)
IPCACHE_MAP_SIZE = 65536  # addresses of endpoints on other nodes (and those nodes' own)
NODEPORT_MAP_SIZE = 4096  # published IPv4 ports of the node (address, port, protocol)
DSR_MAP_SIZE = 65536  # flows from other nodes' frontends to the node's containers
RETIRED_MAP_SIZE = 4096  # deleted endpoints whose flows are yet to be swept (read by no program)
FLOW_COUNTS_MAP_SIZE = 16384  # kinds of new connections counted instead of sent (lib/flowlog.h)


@dataclass(frozen=True)
class MapSizes:
    """The capacities a driver instance configures (--policy-map-size and friends)."""

    policy: int = 262144  # policy entries of all endpoints together
    conntrack: int = 262144  # tracked flows (LRU: the oldest go first when full)
    services: int = 8192  # frontends (each has its own service id and reverse NAT entry)


DEFAULT_MAP_SIZES = MapSizes()


def map_specs(sizes: MapSizes = DEFAULT_MAP_SIZES) -> tuple[MapSpec, ...]:
    """Every map of the datapath. lib/maps.h expects -D<NAME>_MAP_FD for each."""
    return (
        MapSpec("endpoints", BPF_MAP_TYPE_HASH, ct.c_uint32, EndpointInfo, 16384),
        MapSpec("endpoint_addrs", BPF_MAP_TYPE_HASH, EndpointKey, EndpointAddr, 32768),
        MapSpec(
            "drop_counts",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            ct.c_uint32,
            ct.c_uint64,
            reasons.drop_reason_max(),
        ),
        MapSpec(
            "trace_counts",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            ct.c_uint32,
            ct.c_uint64,
            reasons.trace_point_max(),
        ),
        MapSpec(
            "policy",
            BPF_MAP_TYPE_HASH,
            PolicyKeyC,
            PolicyEntryC,
            sizes.policy,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec("conntrack", BPF_MAP_TYPE_LRU_HASH, CtKeyC, CtEntryC, sizes.conntrack),
        MapSpec(
            "cidr4", BPF_MAP_TYPE_LPM_TRIE, Cidr4Key, ct.c_uint32, CIDR_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        MapSpec(
            "cidr6", BPF_MAP_TYPE_LPM_TRIE, Cidr6Key, ct.c_uint32, CIDR_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        MapSpec("config", BPF_MAP_TYPE_ARRAY, ct.c_uint32, ConfigC, 1),
        MapSpec("lb_services", BPF_MAP_TYPE_HASH, LbKeyC, LbServiceC, sizes.services),
        MapSpec("lb_slots", BPF_MAP_TYPE_HASH, LbSlotKeyC, LbAddrC, LB_SLOT_MAP_SIZE),
        MapSpec("lb_revnat", BPF_MAP_TYPE_HASH, ct.c_uint16, LbAddrC, sizes.services),
        MapSpec("lb_flows", BPF_MAP_TYPE_LRU_HASH, CtKeyC, LbFlowC, LB_FLOW_MAP_SIZE),
        MapSpec("events", BPF_MAP_TYPE_RINGBUF, None, None, EVENTS_RING_BYTES),
        MapSpec("retired", BPF_MAP_TYPE_HASH, ct.c_uint32, RetiredC, RETIRED_MAP_SIZE),
        # The XDP prefilter's deny tries (source prefix -> prefix id) and per-CPU counters.
        MapSpec(
            "prefilter4",
            BPF_MAP_TYPE_LPM_TRIE,
            Cidr4Key,
            ct.c_uint32,
            PREFILTER_MAX,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec(
            "prefilter6",
            BPF_MAP_TYPE_LPM_TRIE,
            Cidr6Key,
            ct.c_uint32,
            PREFILTER_MAX,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec(
            "prefilter_drops",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            ct.c_uint32,
            PrefilterCountC,
            PREFILTER_MAX,
        ),
        # Several hosts: remote address -> (identity, node), and the VXLAN device's ifindex.
        MapSpec(
            "ipcache",
            BPF_MAP_TYPE_HASH,
            EndpointKey,
            IpcacheEntryC,
            IPCACHE_MAP_SIZE,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec("tunnel", BPF_MAP_TYPE_ARRAY, ct.c_uint32, ct.c_uint32, 1),
        # Direct server return: published IPv4 ports, and the flows whose replies leave from
        # another node's frontend (least recently used go first: nothing else expires them).
        MapSpec(
            "nodeport4",
            BPF_MAP_TYPE_HASH,
            NodeportKeyC,
            Addr4PortC,
            NODEPORT_MAP_SIZE,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec("dsr4", BPF_MAP_TYPE_LRU_HASH, DsrKeyC, Addr4PortC, DSR_MAP_SIZE),
        # Flow records above a rate: the limit, each CPU's bucket, and the connections counted
        # instead of sent (never deleted by a program: the driver reads growing counts).
        MapSpec("flow_limit", BPF_MAP_TYPE_ARRAY, ct.c_uint32, FlowLimitC, 1),
        MapSpec("flow_budget", BPF_MAP_TYPE_PERCPU_ARRAY, ct.c_uint32, FlowBudgetC, 1),
        MapSpec(
            "flow_counts",
            BPF_MAP_TYPE_PERCPU_HASH,
            FlowCountKeyC,
            ct.c_uint64,
            FLOW_COUNTS_MAP_SIZE,
        ),
    )
