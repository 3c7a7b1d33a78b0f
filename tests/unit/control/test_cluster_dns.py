"""The cluster's DNS answers, from the packet: other nodes' container names on the asker's
network, SERVFAIL for the rest (Docker's embedded DNS then asks its next server)."""

import struct

import pytest

from driver.control.cluster.dns import Query, respond
from driver.control.cluster.endpoints import EndpointRecord

ASKER = "10.213.16.70"


def _record(name, network, ipv4, ipv6, aliases=()):
    return EndpointRecord(
        node="b",
        node_address="198.51.100.2",
        endpoint_id=7,
        ipv6=ipv6,
        ipv4=ipv4,
        identity=300,
        container_name=name,
        aliases=list(aliases),
        network_id="n" * 64,
        network_name=network,
    )


RECORDS = [
    _record("web", "app", "10.213.32.66", "fdce:1c00::2:0:402", aliases=["www"]),
    _record("web", "other", "10.213.32.130", "fdce:1c00::2:0:802"),
    _record("db", "app", None, "fdce:1c00::2:0:403"),
]


def _query(name: str, qtype: int, flags: int = 0x0100) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return (
        struct.pack("!HHHHHH", 0x1234, flags, 1, 0, 0, 1)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


def _ask(name: str, qtype: int) -> tuple[int, list[bytes]]:
    """(rcode, the answers' data) of the reply to a query from ASKER, on network app."""
    networks = {ASKER: "app"}
    query = _query(name, qtype)
    reply = respond(query, ASKER, networks.get, lambda: RECORDS)
    ident, flags, qdcount, ancount = struct.unpack("!HHHH", reply[:8])
    assert (ident, qdcount) == (0x1234, 1) and flags & 0x8000 and flags & 0x0100
    question = Query(query).question
    assert reply[12 : 12 + len(question)] == question, "the question as it came"
    offset = 12 + len(question)
    answers = []
    for _ in range(ancount):
        pointer, _type, _class, ttl, length = struct.unpack("!HHHIH", reply[offset : offset + 12])
        assert pointer == 0xC00C and ttl == 5
        answers.append(reply[offset + 12 : offset + 12 + length])
        offset += 12 + length
    return flags & 0xF, answers


@pytest.mark.parametrize("name", ["web", "WWW", "web.app", "web.app."])
def test_a_remote_containers_name_or_alias_on_the_askers_network(name):
    assert _ask(name, 1) == (0, [bytes([10, 213, 32, 66])])


def test_ipv6_addresses_for_aaaa():
    rcode, answers = _ask("db", 28)
    assert rcode == 0 and answers == [bytes.fromhex("fdce1c00000000000000000200000403")]


@pytest.mark.parametrize(
    ("name", "qtype"),
    [("db", 1), ("cache", 1), ("web.other", 1), ("example.org", 28)],
)
def test_what_the_cluster_does_not_know_is_left_to_the_next_server(name, qtype):
    assert _ask(name, qtype) == (2, [])


def test_a_query_from_no_local_endpoint_is_left_to_the_next_server():
    reply = respond(_query("web", 1), "127.0.0.1", {}.get, lambda: RECORDS)
    assert struct.unpack("!H", reply[2:4])[0] & 0xF == 2


def test_other_types_are_not_implemented_and_garbage_is_not_answered():
    reply = respond(_query("web", 15), ASKER, {ASKER: "app"}.get, lambda: RECORDS)
    assert struct.unpack("!H", reply[2:4])[0] & 0xF == 4
    assert respond(b"\x12\x34", ASKER, {ASKER: "app"}.get, lambda: RECORDS) is None
    assert respond(_query("web", 1, flags=0x8000), ASKER, {}.get, lambda: RECORDS) is None
