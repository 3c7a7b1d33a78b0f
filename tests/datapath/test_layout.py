"""The ctypes mirrors have the sizes lib/common.h asserts for the C structs."""

import ctypes as ct
import ipaddress
import re

import pytest

from datapath import maps
from datapath.events import EventRecord
from datapath.reasons import BPF_LIB


@pytest.mark.parametrize(
    ("struct", "ctype"),
    [
        ("endpoint_info", maps.EndpointInfo),
        ("endpoint_key", maps.EndpointKey),
        ("endpoint_addr", maps.EndpointAddr),
        ("policy_key", maps.PolicyKeyC),
        ("policy_entry", maps.PolicyEntryC),
        ("cidr4_key", maps.Cidr4Key),
        ("cidr6_key", maps.Cidr6Key),
        ("ct_key", maps.CtKeyC),
        ("ct_entry", maps.CtEntryC),
        ("datapath_config", maps.ConfigC),
        ("lb_key", maps.LbKeyC),
        ("lb_service", maps.LbServiceC),
        ("lb_slot_key", maps.LbSlotKeyC),
        ("lb_addr", maps.LbAddrC),
        ("lb_flow", maps.LbFlowC),
        ("datapath_event", EventRecord),
    ],
)
def test_ctypes_size_matches_c_static_assert(struct, ctype):
    header = (BPF_LIB / "common.h").read_text()
    size = re.search(rf"sizeof\(struct {struct}\) == (\d+)", header).group(1)
    assert ct.sizeof(ctype) == int(size)


def test_endpoint_entry_round_trips():
    entry = maps.EndpointEntry(
        endpoint_id=7,
        mac="02:00:00:00:00:07",
        node_mac="02:00:00:00:01:07",
        ipv6=ipaddress.IPv6Address("fdce:1c99::7"),
        ipv4=None,
        router6=ipaddress.IPv6Address("fdce:1c99::1"),
        router4=ipaddress.IPv4Address("10.199.0.1"),
        flags=maps.EP_F_EGRESS_ENFORCED,
        identity=4242,
    )
    assert maps.EndpointEntry.from_leaf(entry.to_leaf()) == entry


def test_modules_import_without_side_effects():
    import datapath

    assert datapath.Datapath().compile_count == 0
