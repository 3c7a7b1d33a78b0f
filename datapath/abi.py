"""The one Python source of the vocabulary shared with the BPF code.

Reserved identities, directions, protocol numbers, flags and the ctypes mirrors of the
structs the pinned maps and the event ring buffer hold, as ``bpf/lib/common.h`` defines
them; plus the names the control plane gives them (enforcement modes, protocol names) and
:class:`PolicyKey`, the control plane's form of a policy map key.
``tests/datapath/test_layout.py`` checks every value, struct size and field offset here
against the headers: change both together.
"""

import ctypes as ct
import ipaddress
from typing import NamedTuple

from .errors import DatapathError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Reserved security identities (IDENTITY_*); endpoint identities are >= FIRST_ENDPOINT_IDENTITY.
ANY_ID = 0  # only as a wildcard in policy keys
HOST_ID = 1
WORLD_ID = 2
INIT_ID = 3  # not known yet: the endpoint sends and receives nothing but NDisc/ARP
UNMANAGED_ID = 4
RESERVED_IDENTITIES = {
    HOST_ID: "host",
    WORLD_ID: "world",
    INIT_ID: "init",
    UNMANAGED_ID: "unmanaged",
}
FIRST_ENDPOINT_IDENTITY = 256
FIRST_CIDR_IDENTITY = 1 << 24  # CIDR prefixes' identities; endpoints' are below
MAX_IDENTITY = 2**32 - 1

# Direction relative to the endpoint (DIR_*).
INGRESS = 0  # traffic to the endpoint
EGRESS = 1  # traffic from it
DIRECTIONS = {INGRESS: "ingress", EGRESS: "egress"}

# Policy enforcement modes (of the control plane; the datapath sees EP_F_*_ENFORCED).
ENFORCEMENT_MODES = ("default", "always", "never")
# Service VIPs come only from these ranges (the driver's defaults; lib/lb.h looks up services
# only for destinations inside the ranges the loader passes).
DEFAULT_SERVICE_RANGES = ("fd00:5::/64", "10.96.0.0/16")

# IANA protocol numbers, as policy keys, conntrack, services and events carry them.
PROTO_ANY = 0  # a wildcard in policy keys; the protocol of an L3-only service frontend
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTOCOL_NAMES = {
    PROTO_ANY: "any",
    PROTO_ICMP: "icmp",
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMPV6: "icmpv6",
}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOL_NAMES.items()}
PORT_PROTOCOLS = (PROTO_TCP, PROTO_UDP)  # the protocols with ports

# endpoint_info.flags
EP_F_INGRESS_ENFORCED = 1
EP_F_EGRESS_ENFORCED = 2
EP_F_MASQUERADE = 4
EP_F_INTERNAL = 8
EP_F_NAT64 = 16  # IPv6-only network: IPv4 only through NAT64
# the bits set from EndpointSpec.outbound
EP_F_OUTBOUND = EP_F_MASQUERADE | EP_F_INTERNAL | EP_F_NAT64
# skb->mark bit of packets to masquerade
MARK_MASQUERADE = 0x02000000
# datapath_config.flags
CONFIG_TRACE_EVENTS = 1
CONFIG_FLOW_EVENTS = 2
# ct_entry.flags
CT_F_TX_CLOSING = 1
CT_F_RX_CLOSING = 2
CT_F_SEEN_REPLY = 4
CT_F_LOOPBACK = 8
# The family field of endpoint_key, ct_key, lb_key and datapath_event.
ENDPOINT_KEY_IPV4 = 1
ENDPOINT_KEY_IPV6 = 2
# datapath_event.kind
EVENT_DROP = 1
EVENT_TRACE = 2
EVENT_FLOW = 3

IP6 = ct.c_uint8 * 16
IP4 = ct.c_uint8 * 4
MAC = ct.c_uint8 * 6


class EndpointInfo(ct.Structure):
    """Leaf of the endpoints map (struct endpoint_info)."""

    _fields_ = (
        ("ipv6", IP6),
        ("router6", IP6),
        ("ipv4", IP4),
        ("router4", IP4),
        ("mac", MAC),
        ("node_mac", MAC),
        ("endpoint_id", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("identity", ct.c_uint32),
    )


class EndpointKey(ct.Structure):
    """Key of the endpoint_addrs map (struct endpoint_key)."""

    _fields_ = (("ip", IP6), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3))


class EndpointAddr(ct.Structure):
    """Leaf of the endpoint_addrs map (struct endpoint_addr)."""

    _fields_ = (("ifindex", ct.c_uint32), ("endpoint_id", ct.c_uint16), ("pad", ct.c_uint16))


class RetiredC(ct.Structure):
    """Leaf of retired (the control plane's own map, no C struct): a deleted endpoint's
    addresses."""

    _fields_ = (("ipv6", IP6), ("ipv4", IP6), ("has_ipv4", ct.c_uint8), ("pad", ct.c_uint8 * 3))


class PolicyKeyC(ct.Structure):
    """Key of the policy map (struct policy_key)."""

    _fields_ = (
        ("endpoint_id", ct.c_uint16),
        ("direction", ct.c_uint8),
        ("protocol", ct.c_uint8),
        ("dport", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("identity", ct.c_uint32),
    )


class PolicyEntryC(ct.Structure):
    """Leaf of the policy map (struct policy_entry)."""

    _fields_ = (("packets", ct.c_uint64), ("bytes", ct.c_uint64))


class Cidr4Key(ct.Structure):
    """Key of cidr4 (struct cidr4_key)."""

    _fields_ = (("prefixlen", ct.c_uint32), ("addr", IP4))


class Cidr6Key(ct.Structure):
    """Key of cidr6 (struct cidr6_key)."""

    _fields_ = (("prefixlen", ct.c_uint32), ("addr", IP6))


class CtKeyC(ct.Structure):
    """Key of the conntrack map and of lb_flows (struct ct_key)."""

    _fields_ = (
        ("saddr", IP6),
        ("daddr", IP6),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("endpoint_id", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("family", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    )


class CtEntryC(ct.Structure):
    """Leaf of the conntrack map (struct ct_entry)."""

    _fields_ = (
        ("lifetime", ct.c_uint32),
        ("rev_nat_index", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("packets", ct.c_uint64),
        ("bytes", ct.c_uint64),
    )


class LbKeyC(ct.Structure):
    """Key of lb_services (struct lb_key)."""

    _fields_ = (
        ("addr", IP6),
        ("port", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("family", ct.c_uint8),
    )


class LbServiceC(ct.Structure):
    """Leaf of lb_services (struct lb_service)."""

    _fields_ = (
        ("id", ct.c_uint16),
        ("count", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("pad", ct.c_uint16),
    )


class LbSlotKeyC(ct.Structure):
    """Key of lb_slots (struct lb_slot_key)."""

    _fields_ = (("service_id", ct.c_uint16), ("slot", ct.c_uint16))


class LbAddrC(ct.Structure):
    """Leaf of lb_slots and lb_revnat (struct lb_addr)."""

    _fields_ = (("addr", IP6), ("port", ct.c_uint16), ("pad", ct.c_uint16))


class LbFlowC(ct.Structure):
    """Leaf of lb_flows (struct lb_flow), keyed by the client's CtKeyC to the frontend."""

    _fields_ = (
        ("backend", IP6),
        ("backend_port", ct.c_uint16),
        ("service_id", ct.c_uint16),
        ("lifetime", ct.c_uint32),
    )


class ConfigC(ct.Structure):
    """Leaf of the one-slot config array (struct datapath_config)."""

    _fields_ = (("flags", ct.c_uint32),)


class EventRecord(ct.Structure):
    """One record of the events ring buffer (struct datapath_event)."""

    _fields_ = (
        ("kind", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("protocol", ct.c_uint8),
        ("family", ct.c_uint8),
        ("code", ct.c_int32),
        ("endpoint_id", ct.c_uint16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("rev_nat_index", ct.c_uint16),
        ("ifindex", ct.c_uint32),
        ("src_identity", ct.c_uint32),
        ("dst_identity", ct.c_uint32),
        ("pad2", ct.c_uint32),
        ("saddr", IP6),
        ("daddr", IP6),
    )


# Every ctypes mirror of a C struct, by the struct's name.
STRUCTS = {
    "endpoint_info": EndpointInfo,
    "endpoint_key": EndpointKey,
    "endpoint_addr": EndpointAddr,
    "policy_key": PolicyKeyC,
    "policy_entry": PolicyEntryC,
    "cidr4_key": Cidr4Key,
    "cidr6_key": Cidr6Key,
    "ct_key": CtKeyC,
    "ct_entry": CtEntryC,
    "lb_key": LbKeyC,
    "lb_service": LbServiceC,
    "lb_slot_key": LbSlotKeyC,
    "lb_addr": LbAddrC,
    "lb_flow": LbFlowC,
    "datapath_config": ConfigC,
    "datapath_event": EventRecord,
}


# The XDP prefilter (PREFILTER_*, struct prefilter_count): prefix ids of both deny tries
# together, and the least time between two drop events of one prefix on one CPU.
PREFILTER_MAX = 8192
PREFILTER_EVENT_NS = 1000000


class PrefilterCountC(ct.Structure):
    """Per-CPU leaf of prefilter_drops, indexed by prefix id (struct prefilter_count)."""

    _fields_ = (("packets", ct.c_uint64), ("last_event", ct.c_uint64))


STRUCTS["prefilter_count"] = PrefilterCountC


class PolicyKey(NamedTuple):
    """One allow entry of an endpoint's policy (struct policy_key without the endpoint);
    0 in a field is a wildcard. A tuple, so that the set arithmetic of a policy change over
    thousands of keys hashes and compares in C."""

    identity: int  # peer identity
    dport: int  # host byte order
    protocol: int  # IANA number
    direction: int  # INGRESS or EGRESS

    def validate(self) -> None:
        if not 0 <= self.identity <= MAX_IDENTITY:
            raise DatapathError(f"policy key {self}: identity out of range")
        if not 0 <= self.dport <= 0xFFFF:
            raise DatapathError(f"policy key {self}: port out of range")
        if not 0 <= self.protocol <= 0xFF:
            raise DatapathError(f"policy key {self}: protocol out of range")
        if self.direction not in (INGRESS, EGRESS):
            raise DatapathError(f"policy key {self}: direction must be INGRESS or EGRESS")
        if self.dport and self.protocol not in PORT_PROTOCOLS:
            raise DatapathError(f"policy key {self}: a port needs protocol tcp (6) or udp (17)")


def validate_identity(identity: int) -> None:
    if not isinstance(identity, int) or not 0 < identity <= MAX_IDENTITY:
        raise DatapathError(f"invalid security identity {identity!r}")


# Several hosts (lib/tunnel.h): the ipcache's value, the mark carrying a tunnel packet's
# identity to to_container, and what fits a VNI.
MARK_IDENTITY = 0x0C000000
MARK_IDENTITY_MASK = 0x0F000000
TUNNEL_ID_MAX = 0x00FFFFFF
TUNNEL_TTL = 64


class IpcacheEntryC(ct.Structure):
    """Value of the ipcache map, keyed by EndpointKey (struct ipcache_entry)."""

    _fields_ = (("identity", ct.c_uint32), ("node", IP4))


STRUCTS["ipcache_entry"] = IpcacheEntryC


# Services across hosts with direct server return (lib/dsr.h): nodeport4's key and the
# address-and-port value of nodeport4 and dsr4, dsr4's key. Ports in host byte order.
class NodeportKeyC(ct.Structure):
    """Key of nodeport4 (struct nodeport_key); addr 0: any address of the host."""

    _fields_ = (
        ("addr", IP4),
        ("port", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("pad", ct.c_uint8),
    )


class Addr4PortC(ct.Structure):
    """Value of nodeport4 and dsr4 (struct addr4_port)."""

    _fields_ = (("addr", IP4), ("port", ct.c_uint16), ("pad", ct.c_uint16))


class DsrKeyC(ct.Structure):
    """Key of dsr4 (struct dsr_key): a flow as it came, client -> container."""

    _fields_ = (
        ("saddr", IP4),
        ("daddr", IP4),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    )


STRUCTS["nodeport_key"] = NodeportKeyC
STRUCTS["addr4_port"] = Addr4PortC
STRUCTS["dsr_key"] = DsrKeyC


# Flow records above a rate (struct flow_limit, flow_budget, flow_count_key): sampled events,
# the rest counted in the kernel (lib/flowlog.h).


class FlowLimitC(ct.Structure):
    """Leaf of the one-slot flow_limit array (struct flow_limit)."""

    _fields_ = (("cost_ns", ct.c_uint64), ("burst_ns", ct.c_uint64))


class FlowBudgetC(ct.Structure):
    """Leaf of the per-CPU one-slot flow_budget array (struct flow_budget)."""

    _fields_ = (("stamp_ns", ct.c_uint64), ("credit_ns", ct.c_uint64), ("overflow", ct.c_uint64))


class FlowCountKeyC(ct.Structure):
    """Key of the per-CPU flow_counts hash (struct flow_count_key); the leaf is a u64."""

    _fields_ = (
        ("src_identity", ct.c_uint32),
        ("dst_identity", ct.c_uint32),
        ("endpoint_id", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("rev_nat_index", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("family", ct.c_uint8),
        ("match", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    )


STRUCTS["flow_limit"] = FlowLimitC
STRUCTS["flow_budget"] = FlowBudgetC
STRUCTS["flow_count_key"] = FlowCountKeyC
