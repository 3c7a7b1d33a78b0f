"""Published ports (`docker run -p`): DNAT in netfilter's nat table for traffic to the host's
own addresses, from other hosts, namespaces or the host itself.

Loopback (127.0.0.1, ::1) is not DNATed: the kernel will not route loopback-sourced packets
out of a veth, so the control plane proxies it in user space instead. Rules carry a comment
naming their endpoint, so each endpoint's rules can be found and removed again. Commands get
fixed arguments and values the control plane validated (addresses, ints, the veth prefix).

Into the tunnel (`snat_into_tunnel`): a published port whose container lives on another
node is DNATed here and leaves through the tunnel (in DSR mode only the host's and its
containers' own connections: from_netdev takes the others first); its source becomes this
node's underlay address, so the container's reply comes back through the tunnel (that
address is in every node's ipcache) to this node's conntrack, which undoes both
translations. Netfilter rather than BPF because the DNAT is netfilter's already: the SNAT
joins the same conntrack entry and needs no state of its own.
"""

import ipaddress
import shlex
import subprocess
from dataclasses import dataclass

from datapath.abi import PROTOCOL_NAMES
from datapath.errors import DatapathError

from . import firewall

TOOLS = {4: "iptables", 6: "ip6tables"}
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
PROTOCOLS = {name: number for number, name in PROTOCOL_NAMES.items()}


@dataclass(frozen=True)
class PortMapping:
    protocol: int  # 6 tcp, 17 udp
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # None: every host address
    host_port: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address  # the container's
    port: int


def _chain(veth_prefix: str) -> str:
    return f"PYCILIUM-{veth_prefix.upper()}-PORTS"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [tool, "-w", "5", "-t", "nat", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        raise DatapathError(f"cannot run {tool}: {exc}") from exc


def _must(tool: str, *args: str) -> None:
    result = _run(tool, *args)
    if result.returncode != 0:
        raise DatapathError(f"{tool} -t nat {' '.join(args)}: {result.stderr.strip()}")


def _hooks(family: int, chain: str) -> list[tuple[str, list[str]]]:
    to_local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", chain]
    return [
        ("PREROUTING", to_local),
        ("OUTPUT", ["!", "-d", LOOPBACK[family], *to_local]),
    ]


def setup(veth_prefix: str) -> None:
    """The chain and its jumps from PREROUTING and OUTPUT, once (idempotent)."""
    chain = _chain(veth_prefix)
    for family, tool in TOOLS.items():
        if _run(tool, "-L", chain, "-n").returncode != 0:
            _must(tool, "-N", chain)
        for hook, rule in _hooks(family, chain):
            if _run(tool, "-C", hook, *rule).returncode != 0:
                _must(tool, "-A", hook, *rule)


def teardown(veth_prefix: str) -> list[str]:
    """Remove the chain and its jumps (tests, uninstall); what was removed."""
    chain = _chain(veth_prefix)
    removed = []
    for family, tool in TOOLS.items():
        for hook, rule in _hooks(family, chain):
            copies = firewall.delete_every(tool, ("-t", "nat"), hook, rule)
            removed += [f"{tool} -t nat {hook} jump to {chain}"] * copies
        _run(tool, "-F", chain)
        if _run(tool, "-X", chain).returncode == 0:
            removed.append(f"{tool} -t nat chain {chain}")
    return removed + remove_snat_into_tunnel(veth_prefix)


def _tunnel_snat_comment(veth_prefix: str) -> str:
    return f"pycilium {veth_prefix} services into the tunnel"


def snat_into_tunnel(veth_prefix: str, device: str, address: str) -> None:
    """DNATed connections that leave by device (the tunnel) get source address (IPv4: the
    node's underlay address). Idempotent; a rule of an older address is replaced."""
    comment = _tunnel_snat_comment(veth_prefix)
    rule = ["-o", device, "-m", "conntrack", "--ctstate", "DNAT", "-m", "comment"]
    rule += ["--comment", comment, "-j", "SNAT", "--to-source", address]
    if _run("iptables", "-C", "POSTROUTING", *rule).returncode == 0:
        return
    remove_snat_into_tunnel(veth_prefix)
    _must("iptables", "-A", "POSTROUTING", *rule)


def remove_snat_into_tunnel(veth_prefix: str) -> list[str]:
    """Remove the rule of snat_into_tunnel (uninstall, a new address); what was removed."""
    comment = _tunnel_snat_comment(veth_prefix)
    removed = []
    for line in _run("iptables", "-S", "POSTROUTING").stdout.splitlines():
        if f'--comment "{comment}"' in line:
            _must("iptables", *shlex.split(line.replace("-A", "-D", 1)))
            removed.append(f"iptables -t nat POSTROUTING SNAT into the tunnel of {veth_prefix}")
    return removed


def _rule(mapping: PortMapping, tag: str) -> list[str]:
    target = mapping.address
    destination = (
        f"[{target}]:{mapping.port}" if target.version == 6 else f"{target}:{mapping.port}"
    )
    rule = ["-p", PROTOCOL_NAMES[mapping.protocol]]
    if mapping.host_ip is not None:
        rule += ["-d", str(mapping.host_ip)]
    rule += ["--dport", str(mapping.host_port), "-m", "comment", "--comment", tag]
    return [*rule, "-j", "DNAT", "--to-destination", destination]


def publish(veth_prefix: str, tag: str, mappings: list[PortMapping]) -> None:
    """Install the DNAT rules of one endpoint (tag names it); all or nothing."""
    chain = _chain(veth_prefix)
    try:
        for mapping in mappings:
            _must(TOOLS[mapping.address.version], "-A", chain, *_rule(mapping, tag))
    except DatapathError:
        unpublish(veth_prefix, tag)
        raise


def unpublish(veth_prefix: str, tag: str) -> None:
    """Remove every rule of the endpoint tagged so; idempotent."""
    chain = _chain(veth_prefix)
    for tool in TOOLS.values():
        listing = _run(tool, "-S", chain)
        for line in listing.stdout.splitlines():
            if f'--comment "{tag}"' in line or f"--comment {tag} " in line:
                # shlex: iptables quotes a tag of other characters than [A-Za-z0-9_-]
                # (another node's endpoint's, remote:<node>/<id>).
                _run(tool, *shlex.split(line.replace("-A", "-D", 1)))


def _mapping_of_rule(words: list[str]) -> PortMapping:
    """The mapping of one rule as `iptables -S` lists it (as _rule made it)."""

    def value(option: str) -> str:
        return words[words.index(option) + 1]

    host_ip = ipaddress.ip_interface(value("-d")).ip if "-d" in words else None
    address, _, port = value("--to-destination").rpartition(":")
    return PortMapping(
        protocol=PROTOCOLS[value("-p")],
        host_ip=host_ip,
        host_port=int(value("--dport")),
        address=ipaddress.ip_address(address.strip("[]")),
        port=int(port),
    )


def mappings_of(veth_prefix: str, tag: str) -> list[PortMapping]:
    """The mappings published for the endpoint tagged so (to undo what goes with them)."""
    found = []
    for tool in TOOLS.values():
        for line in _run(tool, "-S", _chain(veth_prefix)).stdout.splitlines():
            words = shlex.split(line)
            if "--comment" in words and words[words.index("--comment") + 1] == tag:
                found.append(_mapping_of_rule(words))
    return found


def published_tags(veth_prefix: str) -> set[str]:
    """Tags of every endpoint that has rules (to find orphans after a restart)."""
    tags = set()
    for tool in TOOLS.values():
        for line in _run(tool, "-S", _chain(veth_prefix)).stdout.splitlines():
            words = line.split()
            if "--comment" in words:
                tags.add(words[words.index("--comment") + 1].strip('"'))
    return tags
