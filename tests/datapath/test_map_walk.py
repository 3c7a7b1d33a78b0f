"""Reading whole maps: the batched walk returns every entry once, across many batches, and
conntrack clean-up of an endpoint takes exactly its own flows."""

import ipaddress
from pathlib import Path

import pytest

from datapath import maps

SCRATCH_ENTRIES = 3 * maps.BATCH_ENTRIES + 17  # several full batches and a partial one


@pytest.fixture
def ct_map(datapath, pin_dir):
    spec = maps.MapSpec(
        "walk_ct", maps.BPF_MAP_TYPE_LRU_HASH, maps.CtKeyC, maps.CtEntryC, 4 * maps.BATCH_ENTRIES
    )
    pinned = maps.PinnedMap.open(Path(pin_dir), spec)
    yield pinned
    pinned.close()
    pinned.path.unlink()


def ct_key(n: int, endpoint_id: int = 7) -> maps.CtKeyC:
    key = maps.CtKeyC(sport=n & 0xFFFF, dport=n >> 16, endpoint_id=endpoint_id, protocol=6)
    key.family = maps.ENDPOINT_KEY_IPV6
    return key


def test_batched_walk_returns_every_entry_once(ct_map):
    for n in range(SCRATCH_ENTRIES):
        ct_map.update(ct_key(n), maps.CtEntryC(packets=n))
    seen = [(key.sport | key.dport << 16, leaf.packets) for key, leaf in ct_map.items()]
    assert sorted(seen) == [(n, n) for n in range(SCRATCH_ENTRIES)]


def test_batched_walk_of_an_empty_map(ct_map):
    assert list(ct_map.items()) == []


def test_ct_clean_up_takes_the_endpoints_flows_only(datapath):
    """Flows of the endpoint's hooks and flows naming its addresses go; others stay."""
    mine6, mine4 = ipaddress.ip_address("fdce:1c99::77"), ipaddress.ip_address("10.199.0.77")
    other6, other4 = ipaddress.ip_address("fdce:1c99::78"), ipaddress.ip_address("10.199.0.78")
    conntrack = datapath.maps._maps["conntrack"]

    def flow(src, dst, endpoint_id, sport):
        key = maps.CtKeyC(sport=sport, dport=80, endpoint_id=endpoint_id, protocol=6)
        key.family = maps.ENDPOINT_KEY_IPV6 if src.version == 6 else maps.ENDPOINT_KEY_IPV4
        key.saddr, key.daddr = maps._address_key(src).ip, maps._address_key(dst).ip
        conntrack.update(key, maps.CtEntryC())
        return key

    doomed = [
        flow(other6, mine6, 900, 1),  # to its IPv6 address, seen by another hook
        flow(mine4, other4, 900, 2),  # from its IPv4 address
        flow(other6, other6, 901, 3),  # any flow of its own hook
    ]
    kept = [flow(other6, other6, 900, 4), flow(other4, other4, 900, 5)]
    try:
        assert datapath.maps.delete_ct(901, [mine6, mine4]) == len(doomed)
        left = {bytes(key) for key, _ in conntrack.items()}
        assert all(bytes(key) in left for key in kept)
        assert not any(bytes(key) in left for key in doomed)
    finally:
        for key in kept + doomed:
            conntrack.delete(key)
