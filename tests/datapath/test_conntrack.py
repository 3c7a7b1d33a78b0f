"""Connection tracking: entries, lifetimes, replies, related ICMP errors, expiry."""

import ctypes as ct
import sys
import time

from datapath import EGRESS, INGRESS, PolicyKey

from . import traffic


def _flow(datapath, endpoint_id, direction, protocol, dport):
    return [
        e
        for e in datapath.ct_entries()
        if (e.endpoint_id, e.direction, e.protocol, e.dport)
        == (endpoint_id, direction, protocol, dport)
    ]


def _ct_rewrite(datapath, match, lifetime=None, delete=False) -> int:
    """Expire or delete raw conntrack entries (what time and a restart would do)."""
    pinned = datapath.maps._maps["conntrack"]
    done = 0
    for key in list(pinned.keys()):
        leaf = pinned.lookup(key)
        if leaf is None or not match(key):
            continue
        if delete:
            pinned.delete(key)
        else:
            leaf.lifetime = lifetime
            pinned.update(key, leaf)
        done += 1
    return done


def test_tcp_entries_on_both_hooks_and_their_lifetimes(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(80)
    session = a.session(b.spec.ipv6, 80)
    try:
        assert session.echo("hi")
        (out,) = _flow(datapath, a.spec.endpoint_id, EGRESS, 6, 80)
        (into,) = _flow(datapath, b.spec.endpoint_id, INGRESS, 6, 80)
        for entry in (out, into):
            assert (entry.family, entry.src, entry.dst) == (6, a.spec.ipv6, b.spec.ipv6)
            assert entry.established and not entry.tx_closing
            assert entry.lifetime_remaining > 3600
            assert entry.packets >= 3 and entry.rev_nat_index == 0
        assert out.sport == into.sport
    finally:
        session.close()  # the client's kernel sends FIN
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        (out,) = _flow(datapath, a.spec.endpoint_id, EGRESS, 6, 80)
        if out.tx_closing:
            break
        time.sleep(0.05)
    assert out.tx_closing and 0 < out.lifetime_remaining <= 10


def test_udp_and_echo_entries_are_short_lived(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(53, "udp")
    assert a.exchange(b.spec.ipv4, 53, "udp")
    assert a.ping(b.spec.ipv4)
    (udp,) = _flow(datapath, a.spec.endpoint_id, EGRESS, 17, 53)
    assert udp.family == 4 and udp.dst == b.spec.ipv4
    assert 0 < udp.lifetime_remaining <= 60
    echo = [e for e in _flow(datapath, b.spec.endpoint_id, INGRESS, 1, 0) if e.dst == b.spec.ipv4]
    assert echo and echo[0].sport != 0  # the echo id
    assert 0 < echo[0].lifetime_remaining <= 60


def test_related_icmp_error_passes_enforced_ingress(datapath, make_container):
    a, b = make_container(), make_container()
    datapath.set_endpoint_policy(a.spec, True, True, {PolicyKey(b.identity, 9, 17, EGRESS)})
    for addr in (b.spec.ipv6, b.spec.ipv4):
        done = a.exec(sys.executable, "-c", traffic.UDP_PROBE, str(addr), "9")
        assert done.stdout.strip() == "refused"  # port unreachable came back


def test_untracked_flow_goes_through_policy_and_expired_entries_count_as_missing(
    datapath, make_container
):
    a, b = make_container(), make_container()
    b.serve(80)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(a.identity, 80, 6, INGRESS)})
    session = a.session(b.spec.ipv6, 80)
    try:
        assert session.echo("one")

        def of_flow(key) -> bool:
            return (
                key.protocol == 6
                and 80 in (key.sport, key.dport)
                and bytes(key.daddr) in (b.spec.ipv6.packed, a.spec.ipv6.packed)
            )

        # As if the flow predated the driver: mid-stream packets are admitted by policy.
        assert _ct_rewrite(datapath, of_flow, delete=True) >= 2
        assert session.echo("two")
        (into,) = _flow(datapath, b.spec.endpoint_id, INGRESS, 6, 80)
        assert into.established

        # Tracked, the flow outlives a policy that no longer admits it either way ...
        datapath.set_endpoint_policy(b.spec, True, True, set())
        assert session.echo("three")
        # ... until its entries expire: then the next segment is a new flow, denied.
        assert _ct_rewrite(datapath, of_flow, lifetime=1) >= 2
        before = datapath.drop_counts()["DROP_POLICY"]
        assert not session.echo("four")
        assert datapath.drop_counts()["DROP_POLICY"] > before
    finally:
        session.close()


def test_ct_key_layout_is_what_the_decoder_reads():
    from datapath import abi

    assert ct.sizeof(abi.CtKeyC) == 44 and ct.sizeof(abi.CtEntryC) == 24
