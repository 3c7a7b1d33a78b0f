"""The names of other nodes' containers, answered on the node's address for Docker's DNS."""

import ipaddress
import socket
import struct

from driver.control.cluster.dns import respond

from ..ports import free_port
from .conftest import wait_for


def _query(name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"


def test_a_node_answers_the_names_of_other_nodes_containers(nodes):
    port = free_port(kind=socket.SOCK_DGRAM)
    a, b = nodes.start("a", cluster_dns_port=port), nodes.start("b")
    asker = a.plane.endpoint_info(a.endpoint(1, {"app": "client"}))
    web = b.plane.endpoint_info(b.endpoint(2, {"app": "web"}))
    dns = a.plane.cluster.dns
    wait_for(
        lambda: [r.network_name for r in dns.records()] == ["app"],
        5,
        "b's container, with its identity and network, known on a",
    )

    # Docker's embedded DNS asks from inside the container: its address is the source.
    reply = respond(_query("c2"), asker.ipv4, dns.network_of, dns.records)
    assert struct.unpack("!H", reply[6:8]) == (1,)
    assert ipaddress.ip_address(reply[-4:]) == ipaddress.ip_address(web.ipv4)

    # The server itself, on the node's address: a source that is no local endpoint is
    # left to Docker's next server.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(_query("c2"), ("127.0.0.1", port))
        answer, _ = client.recvfrom(512)
    assert answer[:2] == b"\0\7" and answer[3] & 0xF == 2
