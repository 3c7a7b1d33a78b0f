"""Reading whole maps: the batched walk returns every entry once, across many batches, and
conntrack clean-up of an endpoint takes exactly its own flows."""

import ctypes as ct
import ipaddress
from pathlib import Path

import pytest

from datapath import abi, libbpf
from datapath.maps.addressing import address_key
from datapath.maps.conntrack import CT_KEY_SIZE
from datapath.maps.pinned import (
    BATCH_ENTRIES,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_HASH,
    MapSpec,
    PinnedMap,
    record,
)

SCRATCH_ENTRIES = 3 * BATCH_ENTRIES + 17  # several full batches and a partial one


@pytest.fixture
def ct_map(datapath, pin_dir):
    spec = MapSpec("walk_ct", BPF_MAP_TYPE_LRU_HASH, abi.CtKeyC, abi.CtEntryC, 4 * BATCH_ENTRIES)
    pinned = PinnedMap.open(Path(pin_dir), spec)
    yield pinned
    pinned.close()
    pinned.path.unlink()


def ct_key(n: int, endpoint_id: int = 7) -> abi.CtKeyC:
    key = abi.CtKeyC(sport=n & 0xFFFF, dport=n >> 16, endpoint_id=endpoint_id, protocol=6)
    key.family = abi.ENDPOINT_KEY_IPV6
    return key


def test_batched_walk_returns_every_entry_once(ct_map):
    for n in range(SCRATCH_ENTRIES):
        ct_map.update(ct_key(n), abi.CtEntryC(packets=n))
    seen = [(key.sport | key.dport << 16, leaf.packets) for key, leaf in ct_map.items()]
    assert sorted(seen) == [(n, n) for n in range(SCRATCH_ENTRIES)]


def test_batched_walk_of_a_per_cpu_hash_gives_every_cpus_values(pin_dir):
    """As flow_counts is read: each key with its value on every CPU, across batches."""
    spec = MapSpec(
        "walk_percpu", BPF_MAP_TYPE_PERCPU_HASH, abi.FlowCountKeyC, ct.c_uint64, 2 * BATCH_ENTRIES
    )
    pinned = PinnedMap.open(Path(pin_dir), spec)
    try:
        cpus = libbpf.lib().libbpf_num_possible_cpus()
        entries = BATCH_ENTRIES + 5
        for n in range(entries):
            pinned.update(
                abi.FlowCountKeyC(src_identity=n), (ct.c_uint64 * cpus)(n, *[1] * (cpus - 1))
            )
        seen = [(key.src_identity, list(values)) for key, values in pinned.items()]
        assert sorted(seen) == [(n, [n, *[1] * (cpus - 1)]) for n in range(entries)]
    finally:
        pinned.close()
        pinned.path.unlink()


def test_batched_walk_of_an_empty_map(ct_map):
    assert list(ct_map.items()) == []


def test_ct_clean_up_takes_the_endpoints_flows_only(datapath):
    """Flows of the endpoint's hooks and flows naming its addresses go; others stay."""
    mine6, mine4 = ipaddress.ip_address("fdce:1c99::77"), ipaddress.ip_address("10.199.0.77")
    other6, other4 = ipaddress.ip_address("fdce:1c99::78"), ipaddress.ip_address("10.199.0.78")
    conntrack = datapath.maps._maps["conntrack"]

    def flow(src, dst, endpoint_id, sport):
        key = abi.CtKeyC(sport=sport, dport=80, endpoint_id=endpoint_id, protocol=6)
        key.family = abi.ENDPOINT_KEY_IPV6 if src.version == 6 else abi.ENDPOINT_KEY_IPV4
        key.saddr, key.daddr = address_key(src).ip, address_key(dst).ip
        conntrack.update(key, abi.CtEntryC())
        return key

    doomed = [
        flow(other6, mine6, 900, 1),  # to its IPv6 address, seen by another hook
        flow(mine4, other4, 900, 2),  # from its IPv4 address
        flow(other6, other6, 901, 3),  # any flow of its own hook
    ]
    kept = [flow(other6, other6, 900, 4), flow(other4, other4, 900, 5)]
    try:
        assert datapath.maps.delete_ct({901}, [mine6, mine4]) == len(doomed)
        left = {bytes(key) for key, _ in conntrack.items()}
        assert all(bytes(key) in left for key in kept)
        assert not any(bytes(key) in left for key in doomed)
    finally:
        for key in kept + doomed:
            conntrack.delete(key)


def test_packed_walk_matches_the_decoded_walk(ct_map):
    for n in range(SCRATCH_ENTRIES):
        ct_map.update(ct_key(n, endpoint_id=n % 5), abi.CtEntryC(packets=n))
    decoded = sorted((bytes(key), bytes(leaf)) for key, leaf in ct_map.items())
    packed = []
    for keys, leaves in ct_map.packed_items():
        count = len(keys) // CT_KEY_SIZE
        assert len(leaves) == count * ct.sizeof(abi.CtEntryC)
        packed += [
            (record(keys, CT_KEY_SIZE, i), record(leaves, len(leaves) // count, i))
            for i in range(count)
        ]
    assert sorted(packed) == decoded


def test_batched_delete_skips_keys_already_gone(ct_map):
    """An LRU map evicts between the walk and the delete: the batch goes on past a missing key."""
    for n in range(10):
        ct_map.update(ct_key(n), abi.CtEntryC())
    ct_map.delete(ct_key(3))
    ct_map.delete(ct_key(9))
    doomed = b"".join(bytes(ct_key(n)) for n in (1, 3, 5, 9, 7))
    assert ct_map.delete_packed(doomed) == 3
    left = sorted(key.sport for key, _ in ct_map.items())
    assert left == [0, 2, 4, 6, 8]


def test_lb_flow_clean_up_by_endpoint_and_by_service(datapath):
    flows = datapath.maps._maps["lb_flows"]
    made = {}
    for n in range(2 * BATCH_ENTRIES):
        key = ct_key(n, endpoint_id=900 + n % 3)
        flows.update(key, abi.LbFlowC(service_id=7000 + n % 4))
        made[bytes(key)] = (900 + n % 3, 7000 + n % 4)
    try:
        gone_by_endpoint = sum(1 for owner, _ in made.values() if owner == 901)
        assert datapath.maps.delete_lb_flows(endpoint_ids={901}) == gone_by_endpoint
        gone_by_service = sum(1 for owner, svc in made.values() if owner != 901 and svc == 7002)
        assert datapath.maps.delete_lb_flows(service_id=7002) == gone_by_service
        left = {bytes(key) for key, _ in flows.items()}
        assert {k for k in made if k in left} == {
            k for k, (owner, svc) in made.items() if owner != 901 and svc != 7002
        }
    finally:
        for key in made:
            flows.delete(abi.CtKeyC.from_buffer_copy(key))
