"""Unreachable routes, overlap checks against the host's routes, routes inside a sandbox."""

import pytest

from datapath import netlink

from .conftest import NET4, NET6, run


@pytest.fixture
def foreign_routes():
    """Routes that are not ours (blackholes: they carry nothing), as an admin would add."""
    routes = [("-4", "10.198.0.0/24"), ("-6", "fdce:1c98::/64")]
    for family, cidr in routes:
        run("ip", family, "route", "add", "blackhole", cidr)
    yield routes
    for family, cidr in routes:
        run("ip", family, "route", "del", "blackhole", cidr, check=False)


def test_unreachable_route_is_idempotent(datapath):
    cidr = "10.199.250.0/24"
    try:
        datapath.add_unreachable_route(cidr)
        datapath.add_unreachable_route(cidr)
        shown = run("ip", "route", "show", "type", "unreachable", "proto", "206").stdout
        assert cidr in shown
    finally:
        datapath.remove_unreachable_route(cidr)
        datapath.remove_unreachable_route(cidr)
    assert cidr not in run("ip", "route", "show", "type", "unreachable").stdout


def test_route_protocol_matches_what_ip_shows():
    assert netlink.ROUTE_PROTOCOL == 206


def test_overlaps_report_host_routes(datapath, foreign_routes):
    assert datapath.host_route_overlaps("10.198.0.0/16") == ["10.198.0.0/24"]
    assert datapath.host_route_overlaps("10.198.0.128/25") == ["10.198.0.0/24"]
    assert datapath.host_route_overlaps("fdce:1c98::/48") == ["fdce:1c98::/64"]


def test_overlaps_ignore_our_own_routes(datapath, make_container):
    make_container()
    assert datapath.host_route_overlaps(str(NET4)) == []
    assert datapath.host_route_overlaps(str(NET6)) == []


def test_host_addresses_include_loopback_and_test_veths(datapath, make_container):
    a = make_container()
    run("ip", "addr", "add", "fdce:1c99::fffd/128", "dev", a.spec.host_ifname, "nodad")
    addresses = datapath.host_addresses()
    assert {"127.0.0.1", "::1", "fdce:1c99::fffd"} <= set(addresses)
