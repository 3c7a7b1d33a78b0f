"""Packets with a source the endpoint does not own are dropped and counted by reason."""

import ipaddress

from .conftest import NET4, NET6


def _dropped(datapath, reason, action) -> int:
    before = datapath.drop_counts()[reason]
    action()
    return datapath.drop_counts()[reason] - before


def test_spoofed_ipv6_source_is_dropped(datapath, make_container):
    a, b = make_container(), make_container()
    fake = NET6[0xFFF0]
    a.ip("-6", "addr", "add", f"{fake}/128", "dev", "eth0", "nodad")
    dropped = _dropped(
        datapath, "DROP_INVALID_SIP6", lambda: not_reached(a.ping(b.spec.ipv6, "-I", str(fake)))
    )
    assert dropped >= 1


def test_spoofed_ipv4_source_is_dropped(datapath, make_container):
    a, b = make_container(), make_container()
    fake = NET4[0xFFF0]
    a.ip("addr", "add", f"{fake}/32", "dev", "eth0")
    dropped = _dropped(
        datapath, "DROP_INVALID_SIP4", lambda: not_reached(a.ping(b.spec.ipv4, "-I", str(fake)))
    )
    assert dropped >= 1


def test_changed_container_mac_is_dropped(datapath, make_container):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv6)
    a.ip("link", "set", "eth0", "address", "02:dc:ff:ff:ff:01")
    dropped = _dropped(datapath, "DROP_INVALID_SMAC", lambda: not_reached(a.ping(b.spec.ipv6)))
    assert dropped >= 1


def test_own_address_still_works_next_to_a_spoofed_one(make_container):
    a, b = make_container(), make_container()
    a.ip("addr", "add", f"{ipaddress.IPv4Address(int(NET4[0xFFF1]))}/32", "dev", "eth0")
    assert a.ping(b.spec.ipv4, "-I", str(a.spec.ipv4))


def not_reached(reached: bool) -> None:
    assert not reached, "a spoofed packet got through"
