"""Creating, deleting, restoring endpoints and their failure modes."""

import dataclasses
import os

import pytest

from datapath import Datapath, DatapathError, Outbound, VethExistsError, libbpf, loader, netlink
from datapath.abi import EP_F_INGRESS_ENFORCED, EP_F_INTERNAL, EP_F_MASQUERADE
from datapath.loader import egress_program_names, ingress_program_names

from .conftest import run


def _routes_to(addr) -> str:
    family = "-6" if addr.version == 6 else "-4"
    return run("ip", family, "route", "show", "proto", str(netlink.ROUTE_PROTOCOL)).stdout


def _leftovers(datapath, spec, ifindex) -> list[str]:
    found = []
    if netlink.link_index(spec.host_ifname) is not None:
        found.append(spec.host_ifname)
    if netlink.link_index(spec.peer_ifname) is not None:
        found.append(spec.peer_ifname)
    for ip in spec.addresses():
        if f"{ip} " in _routes_to(ip):
            found.append(f"route {ip}")
        if ip in datapath.address_map_entries():
            found.append(f"address entry {ip}")
    if ifindex in datapath.endpoint_map_entries():
        found.append(f"endpoint entry {ifindex}")
    return found


def test_create_makes_veth_routes_entries_and_program(datapath, new_spec):
    spec = new_spec()
    ifindex = datapath.create_endpoint(spec)
    try:
        entry = datapath.endpoint_map_entries()[ifindex]
        assert (entry.endpoint_id, entry.mac, entry.ipv6, entry.ipv4) == (
            spec.endpoint_id,
            spec.mac,
            spec.ipv6,
            spec.ipv4,
        )
        assert entry.node_mac == netlink.link_mac(ifindex)
        assert datapath.address_map_entries()[spec.ipv6].ifindex == ifindex
        assert ingress_program_names(ifindex) == [loader.FROM_CONTAINER]
        assert egress_program_names(ifindex) == [loader.TO_CONTAINER]
        # Not enforced yet; outbound traffic masqueraded, the default.
        assert entry.identity == spec.identity and entry.flags == EP_F_MASQUERADE
        assert f"{spec.ipv4} " in _routes_to(spec.ipv4)
    finally:
        datapath.delete_endpoint(spec)


def test_delete_leaves_nothing_and_is_idempotent(datapath, make_container):
    a = make_container()
    datapath.delete_endpoint(a.spec)
    datapath.delete_endpoint(a.spec)
    assert _leftovers(datapath, a.spec, a.ifindex) == []


def test_existing_veth_raises_and_changes_nothing(datapath, make_container, new_spec):
    a, b = make_container(), make_container()
    before = datapath.endpoint_map_entries()
    clash = new_spec()
    clash = type(clash)(**{**clash.__dict__, "host_ifname": a.spec.host_ifname})
    with pytest.raises(VethExistsError, match=a.spec.host_ifname):
        datapath.create_endpoint(clash)
    assert datapath.endpoint_map_entries() == before
    assert _leftovers(datapath, clash, -1) == [a.spec.host_ifname]
    assert a.ping(b.spec.ipv6)


def test_failure_midway_rolls_back(datapath, new_spec, monkeypatch):
    def broken_attach(ifindex, program):
        raise DatapathError("attach failed (test)")

    monkeypatch.setattr(loader, "attach_ingress", broken_attach)
    spec = new_spec()
    with pytest.raises(DatapathError, match="attach failed"):
        datapath.create_endpoint(spec)
    assert _leftovers(datapath, spec, -1) == []
    assert spec.ipv6 not in {e.ipv6 for e in datapath.endpoint_map_entries().values()}


def test_ten_endpoints_compile_once(datapath, new_spec):
    specs = [new_spec() for _ in range(10)]
    # The session's start compiled bpf_lxc.c; other tests may have compiled the prefilter.
    before = datapath.compile_count
    try:
        for spec in specs:
            datapath.create_endpoint(spec)
        assert before >= 1 and datapath.compile_count == before
    finally:
        for spec in specs:
            datapath.delete_endpoint(spec)


def program_id(datapath: Datapath) -> int:
    return libbpf.object_id(datapath.programs.from_container.fd)


def test_restore_after_restart(datapath, pin_dir, make_container):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv6)
    entries = datapath.endpoint_map_entries()

    restarted = Datapath(
        pin_dir=pin_dir,
        veth_prefix=datapath.veth_prefix,
        service_ranges=datapath.service_ranges,
    )
    restarted.start()
    try:
        assert (restarted.compile_count, restarted.reuse_count) == (0, 1)
        assert program_id(restarted) == program_id(datapath)  # the running build, reused
        assert restarted.endpoint_map_entries() == entries
        assert a.ping(b.spec.ipv6)  # the old program is still attached
        assert restarted.restore_endpoint(a.spec)
        assert restarted.restore_endpoint(b.spec)
        assert restarted.endpoint_map_entries() == entries
        assert a.ping(b.spec.ipv6)
        assert a.ping(b.spec.ipv4)
    finally:
        restarted.close()


def test_restore_of_vanished_veth_removes_entries(datapath, make_container):
    a = make_container()
    netlink.delete_link(a.spec.host_ifname)
    assert not datapath.restore_endpoint(a.spec)
    assert _leftovers(datapath, a.spec, a.ifindex) == []


def test_remove_orphans(datapath, make_container):
    kept, orphan = make_container(), make_container()
    stale_ifindex = 0x7FFF0000 + os.getpid() % 0xFFFF
    datapath.maps.put_endpoint(stale_ifindex, datapath.endpoint_map_entries()[kept.ifindex])
    known = set(netlink.links_with_prefix(datapath.veth_prefix)) - {orphan.spec.host_ifname}
    removed = datapath.remove_orphans(known)
    assert orphan.spec.host_ifname in removed
    assert f"endpoint map entry {stale_ifindex}" in removed
    assert f"address map entry {orphan.spec.ipv6}" in removed
    assert _leftovers(datapath, orphan.spec, orphan.ifindex) == []
    assert kept.ifindex in datapath.endpoint_map_entries()


def test_restore_takes_the_outbound_mode_of_the_spec(datapath, pin_dir, make_container):
    """A network's outbound mode applies to endpoints made before it was known (an upgrade),
    and the policy enforcement flags stay."""
    a = make_container()
    datapath.set_endpoint_policy(a.spec, True, False, set())
    restarted = Datapath(
        pin_dir=pin_dir,
        veth_prefix=datapath.veth_prefix,
        service_ranges=datapath.service_ranges,
    )
    restarted.start()
    try:
        assert restarted.restore_endpoint(dataclasses.replace(a.spec, outbound=Outbound.INTERNAL))
        flags = restarted.endpoint_map_entries()[a.ifindex].flags
        assert flags == EP_F_INGRESS_ENFORCED | EP_F_INTERNAL
    finally:
        restarted.close()


def test_not_started_is_a_clear_error(pin_dir, new_spec):
    with pytest.raises(DatapathError, match="not started"):
        Datapath(pin_dir=pin_dir).create_endpoint(new_spec())


def test_restore_keeps_enforcement_and_policy(datapath, pin_dir, make_container):
    from datapath import INGRESS, PolicyKey

    a, b, c = make_container(), make_container(), make_container()
    keys = {PolicyKey(a.identity, 0, 0, INGRESS)}
    datapath.set_endpoint_policy(b.spec, True, False, keys)
    restarted = Datapath(
        pin_dir=pin_dir,
        veth_prefix=datapath.veth_prefix,
        service_ranges=datapath.service_ranges,
    )
    restarted.start()
    try:
        assert restarted.restore_endpoint(b.spec)
        assert restarted.endpoint_map_entries()[b.ifindex].flags == (
            EP_F_INGRESS_ENFORCED | EP_F_MASQUERADE
        )
        assert restarted.policy_entries(b.spec).keys() == keys
        assert egress_program_names(b.ifindex) == [loader.TO_CONTAINER]
        assert a.ping(b.spec.ipv6)
        assert not c.ping(b.spec.ipv6, timeout=1)
    finally:
        restarted.close()


def test_remove_orphans_drops_policy_of_unknown_endpoints(datapath, make_container):
    from datapath import INGRESS, PolicyKey

    kept, orphan = make_container(), make_container()
    datapath.set_endpoint_policy(orphan.spec, True, False, {PolicyKey(0, 0, 0, INGRESS)})
    known = set(netlink.links_with_prefix(datapath.veth_prefix)) - {orphan.spec.host_ifname}
    removed = datapath.remove_orphans(known)
    assert f"policy entries of endpoint {orphan.spec.endpoint_id}" in removed
    assert datapath.policy_entries(orphan.spec) == {}
    assert kept.ifindex in datapath.endpoint_map_entries()
