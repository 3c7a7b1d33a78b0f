"""Ports for the servers tests start (etcd, DNS, the driver's metrics and service map, a
browser's DevTools). Each is picked below the kernel's ephemeral range: a port the kernel
hands out (bind to port 0) can be taken as the source port of any outgoing connection on
the machine between the pick and the server's own bind, and then the server fails with
"address already in use"."""

import random
import socket
from pathlib import Path

LOWEST = 10000
# Not the random module's generator: pytest-randomly seeds that one the same for every test,
# and test sessions running side by side would then pick the same ports.
_CHOOSE = random.SystemRandom()


def _ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def _free(family: int, kind: int, host: str, port: int) -> bool:
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM, count: int = 1) -> int:
    """A port of host free for kind (TCP or UDP) now, and its count - 1 successors too, all
    below the ephemeral range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    end = _ephemeral_start() - count
    if end <= LOWEST:
        raise RuntimeError(f"the ephemeral port range starts at {end + count}: no room below it")
    for _ in range(200):
        port = _CHOOSE.randrange(LOWEST, end)
        if all(_free(family, kind, host, port + i) for i in range(count)):
            return port
    raise RuntimeError(f"no {count} free consecutive ports on {host} below {end + count}")
