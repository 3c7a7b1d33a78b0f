"""Addresses in the form the maps hold them: 16 bytes (IPv4 in the first 4, the rest zero)
and an ENDPOINT_KEY_* family."""

import ipaddress

from ..abi import ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6, IP6, EndpointKey, IPAddress


def decode_address(family: int, raw) -> IPAddress:
    """The address of raw (16 bytes) in family; anything but ENDPOINT_KEY_IPV6 is IPv4."""
    if family == ENDPOINT_KEY_IPV6:
        return ipaddress.IPv6Address(bytes(raw))
    return ipaddress.IPv4Address(bytes(raw)[:4])


def family_of_version(version: int) -> int:
    return ENDPOINT_KEY_IPV6 if version == 6 else ENDPOINT_KEY_IPV4


def family_of(ip: IPAddress) -> int:
    return family_of_version(ip.version)


def address_key(ip: IPAddress) -> EndpointKey:
    """The endpoint_addrs key of ip; its ip and family fields are ip in the maps' form."""
    return EndpointKey(ip=IP6(*ip.packed), family=family_of(ip))
