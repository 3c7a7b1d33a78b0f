"""EndedFlows: which conntrack entries ended between two walks (pure logic on packed bytes)."""

from datapath.abi import EGRESS, ENDPOINT_KEY_IPV4, CtEntryC, CtKeyC
from datapath.flowends import EndedFlows

NOW = 1000


def _key(sport: int) -> bytes:
    key = CtKeyC(sport=sport, dport=80, endpoint_id=7, protocol=6, direction=EGRESS)
    key.family = ENDPOINT_KEY_IPV4
    key.saddr[:4] = [10, 0, 0, 1]
    key.daddr[:4] = [10, 0, 0, 2]
    return bytes(key)


def _walk(*entries: tuple[int, int, int]) -> list[tuple[bytes, bytes]]:
    """One batch of (sport, lifetime, packets) entries."""
    keys = b"".join(_key(sport) for sport, _, _ in entries)
    leaves = b"".join(
        bytes(CtEntryC(lifetime=lifetime, packets=packets, bytes=packets * 100))
        for _, lifetime, packets in entries
    )
    return [(keys, leaves)]


def test_the_first_walk_only_learns():
    ends = EndedFlows()
    assert ends.scan(_walk((1, NOW - 5, 3)), NOW) == []


def test_an_entry_that_expired_ends_once_with_its_final_counts():
    ends = EndedFlows()
    ends.scan(_walk((1, NOW + 10, 3), (2, NOW + 10, 1)), NOW)
    ended = ends.scan(_walk((1, NOW - 1, 9), (2, NOW + 10, 2)), NOW)
    assert [(e.sport, e.packets, e.bytes) for e in ended] == [(1, 9, 900)]
    assert str(ended[0].src) == "10.0.0.1" and ended[0].lifetime_remaining == -1
    assert ends.scan(_walk((1, NOW - 1, 9), (2, NOW + 10, 2)), NOW) == []


def test_an_entry_that_went_ends_with_the_counts_last_seen():
    ends = EndedFlows()
    ends.scan(_walk((1, NOW + 10, 3), (2, NOW + 10, 1)), NOW)
    ended = ends.scan(_walk((2, NOW + 10, 1)), NOW)
    assert [(e.sport, e.packets) for e in ended] == [(1, 3)]


def test_a_reused_tuple_ends_the_connection_before():
    ends = EndedFlows()
    ends.scan(_walk((1, NOW + 10, 30)), NOW)
    ended = ends.scan(_walk((1, NOW + 60, 1)), NOW)
    assert [(e.sport, e.packets) for e in ended] == [(1, 30)]
    assert ends.scan(_walk((1, NOW + 60, 5)), NOW) == []


def test_an_entry_never_seen_live_is_no_ended_connection():
    ends = EndedFlows()
    ends.scan(_walk(), NOW)
    assert ends.scan(_walk((1, NOW - 100, 3)), NOW) == []
