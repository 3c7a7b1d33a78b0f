"""datapath.abi says what lib/common.h says: every constant, and each struct's size and
field offsets.

The structs are laid out from the header by C's rules for the few fixed-width types they
use; the sizes that come out are checked against the header's own _Static_asserts, which
the compiler checks on every program build.
"""

import ctypes as ct
import ipaddress
import re
import socket

import pytest

from datapath import abi
from datapath.maps import EndpointEntry
from datapath.reasons import BPF_LIB

COMMON_H = BPF_LIB / "common.h"

# C type -> (size, alignment)
C_TYPES = {
    "__u8": (1, 1),
    "__u16": (2, 2),
    "__u32": (4, 4),
    "__u64": (8, 8),
    "__s32": (4, 4),
    "__be32": (4, 4),
    "union v6addr": (16, 4),  # __u8 addr[16] or __be32 p[4]
}
ARRAY_SIZES = {"ETH_ALEN": 6}  # uapi/linux/if_ether.h

# lib/common.h #define -> its value in datapath.abi, for every #define of these families.
CONSTANTS = {
    "IDENTITY_ANY": abi.ANY_ID,
    "IDENTITY_HOST": abi.HOST_ID,
    "IDENTITY_WORLD": abi.WORLD_ID,
    "IDENTITY_INIT": abi.INIT_ID,
    "IDENTITY_UNMANAGED": abi.UNMANAGED_ID,
    "FIRST_ENDPOINT_IDENTITY": abi.FIRST_ENDPOINT_IDENTITY,
    "FIRST_CIDR_IDENTITY": abi.FIRST_CIDR_IDENTITY,
    "DIR_INGRESS": abi.INGRESS,
    "DIR_EGRESS": abi.EGRESS,
    "EP_F_INGRESS_ENFORCED": abi.EP_F_INGRESS_ENFORCED,
    "EP_F_EGRESS_ENFORCED": abi.EP_F_EGRESS_ENFORCED,
    "EP_F_MASQUERADE": abi.EP_F_MASQUERADE,
    "EP_F_INTERNAL": abi.EP_F_INTERNAL,
    "EP_F_NAT64": abi.EP_F_NAT64,
    "MARK_MASQUERADE": abi.MARK_MASQUERADE,
    "ENDPOINT_KEY_IPV4": abi.ENDPOINT_KEY_IPV4,
    "ENDPOINT_KEY_IPV6": abi.ENDPOINT_KEY_IPV6,
    "CT_F_TX_CLOSING": abi.CT_F_TX_CLOSING,
    "CT_F_RX_CLOSING": abi.CT_F_RX_CLOSING,
    "CT_F_SEEN_REPLY": abi.CT_F_SEEN_REPLY,
    "CT_F_LOOPBACK": abi.CT_F_LOOPBACK,
    "CONFIG_TRACE_EVENTS": abi.CONFIG_TRACE_EVENTS,
    "CONFIG_FLOW_EVENTS": abi.CONFIG_FLOW_EVENTS,
    "EVENT_DROP": abi.EVENT_DROP,
    "EVENT_TRACE": abi.EVENT_TRACE,
    "EVENT_FLOW": abi.EVENT_FLOW,
    "PREFILTER_MAX": abi.PREFILTER_MAX,
    "PREFILTER_EVENT_NS": abi.PREFILTER_EVENT_NS,
}
FAMILIES = (
    "IDENTITY_",
    "FIRST_",
    "DIR_",
    "EP_F_",
    "MARK_",
    "ENDPOINT_KEY_",
    "CT_F_",
    "CONFIG_",
    "EVENT_",
)
FAMILIES += ("PREFILTER_",)
CONSTANTS |= {
    "MARK_IDENTITY": abi.MARK_IDENTITY,
    "MARK_IDENTITY_MASK": abi.MARK_IDENTITY_MASK,
    "TUNNEL_ID_MAX": abi.TUNNEL_ID_MAX,
    "TUNNEL_TTL": abi.TUNNEL_TTL,
}
FAMILIES += ("TUNNEL_",)


def _header() -> str:
    return re.sub(r"/\*.*?\*/", "", COMMON_H.read_text(), flags=re.S)


def _defines() -> dict[str, int]:
    found = re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", _header(), re.M)
    return {name: int(value, 0) for name, value in found}


def _static_sizes() -> dict[str, int]:
    found = re.findall(r"_Static_assert\(sizeof\(struct (\w+)\) == (\d+)", _header())
    return {name: int(size) for name, size in found}


def _c_layout(struct: str) -> tuple[list[tuple[str, int, int]], int]:
    """(field name, offset, size) of each field of struct, and the struct's size."""
    body = re.search(rf"^struct {struct} \{{\n(.*?)^\}};", _header(), re.S | re.M).group(1)
    fields, offset, largest = [], 0, 1
    for line in filter(None, map(str.strip, body.splitlines())):
        match = re.fullmatch(r"(union v6addr|\w+)\s+(\w+)(?:\[(\w+)\])?;", line)
        assert match, f"struct {struct}: cannot lay out {line!r}"
        ctype, name, count = match.groups()
        size, align = C_TYPES[ctype]
        if count:
            size *= ARRAY_SIZES[count] if count in ARRAY_SIZES else int(count)
        offset = -(-offset // align) * align
        fields.append((name, offset, size))
        offset += size
        largest = max(largest, align)
    return fields, -(-offset // largest) * largest


def test_every_asserted_struct_has_a_mirror():
    assert set(_static_sizes()) == set(abi.STRUCTS)


@pytest.mark.parametrize("struct", sorted(abi.STRUCTS))
def test_struct_size_and_offsets_match_the_header(struct):
    ctype = abi.STRUCTS[struct]
    fields, size = _c_layout(struct)
    assert size == _static_sizes()[struct]  # the layout rules here are the compiler's
    mirrored = [
        (name, getattr(ctype, name).offset, getattr(ctype, name).size)
        for name, *_ in ctype._fields_
    ]
    assert mirrored == fields
    assert ct.sizeof(ctype) == size


def test_constants_match_the_header():
    defines = _defines()
    in_families = {name for name in defines if name.startswith(FAMILIES)}
    assert in_families == set(CONSTANTS)
    assert {name: defines[name] for name in CONSTANTS} == CONSTANTS


def test_reserved_identities_are_the_headers_less_the_wildcard():
    reserved = {value for name, value in CONSTANTS.items() if name.startswith("IDENTITY_")}
    assert set(abi.RESERVED_IDENTITIES) == reserved - {abi.ANY_ID}
    assert max(reserved) < abi.FIRST_ENDPOINT_IDENTITY
    assert set(abi.DIRECTIONS) == {abi.INGRESS, abi.EGRESS}


def test_protocol_numbers_are_the_kernels():
    assert (abi.PROTO_ICMP, abi.PROTO_TCP, abi.PROTO_UDP, abi.PROTO_ICMPV6) == (
        socket.IPPROTO_ICMP,
        socket.IPPROTO_TCP,
        socket.IPPROTO_UDP,
        socket.IPPROTO_ICMPV6,
    )
    assert abi.PROTO_ANY == 0
    assert {abi.PROTOCOL_NUMBERS[name]: name for name in abi.PROTOCOL_NUMBERS} == abi.PROTOCOL_NAMES


def test_endpoint_entry_round_trips():
    entry = EndpointEntry(
        endpoint_id=7,
        mac="02:00:00:00:00:07",
        node_mac="02:00:00:00:01:07",
        ipv6=ipaddress.IPv6Address("fdce:1c99::7"),
        ipv4=None,
        router6=ipaddress.IPv6Address("fdce:1c99::1"),
        router4=ipaddress.IPv4Address("10.199.0.1"),
        flags=abi.EP_F_EGRESS_ENFORCED,
        identity=4242,
    )
    assert EndpointEntry.from_leaf(entry.to_leaf()) == entry


def test_modules_import_without_side_effects():
    import datapath

    assert datapath.Datapath().compile_count == 0
