"""Netfilter's say on forwarded traffic of our veths.

Docker sets the IPv4 FORWARD policy to DROP and accepts only its own bridges, so traffic
routed between an endpoint and anything behind the host (another namespace, the outside)
would die there. Policy is enforced in BPF; netfilter just has to let endpoint traffic
through. Rules are appended after DOCKER-USER, so a user's own DOCKER-USER rules still
come first. The commands take fixed arguments and the validated veth prefix only.

Masquerading is netfilter's too: its conntrack picks source ports, undoes the translation
on replies and on the ICMP errors about them (inner header included). The BPF program
decides which packets it applies to (per endpoint, by its network) and marks them with
MARK_MASQUERADE; one nat POSTROUTING rule per family translates the marked packets that
leave by a device other than our veths.
"""

import subprocess

from datapath.abi import MARK_MASQUERADE
from datapath.errors import DatapathError

TOOLS = ("iptables", "ip6tables")


def _rules(veth_prefix: str) -> list[list[str]]:
    interface = veth_prefix + "+"
    return [["-i", interface, "-j", "ACCEPT"], ["-o", interface, "-j", "ACCEPT"]]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [tool, "-w", "5", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise DatapathError(f"cannot run {tool}: {exc}") from exc


def accept_forwarding(veth_prefix: str) -> None:
    """Idempotent: each rule is added once, to the end of FORWARD."""
    for tool in TOOLS:
        for rule in _rules(veth_prefix):
            if _run(tool, "-C", "FORWARD", *rule).returncode == 0:
                continue
            result = _run(tool, "-A", "FORWARD", *rule)
            if result.returncode != 0:
                raise DatapathError(f"{tool} -A FORWARD {' '.join(rule)}: {result.stderr.strip()}")


def delete_every(tool: str, table: tuple[str, ...], chain: str, rule: list[str]) -> int:
    """Delete every copy of `rule` in `chain`; how many there were. A delete the tool
    refuses (its lock not taken in time, say) is an error, never a loop."""
    deleted = 0
    while _run(tool, *table, "-C", chain, *rule).returncode == 0:
        result = _run(tool, *table, "-D", chain, *rule)
        if result.returncode != 0:
            raise DatapathError(f"{tool} {' '.join(table)} -D {chain}: {result.stderr.strip()}")
        deleted += 1
    return deleted


def remove_forwarding(veth_prefix: str) -> list[str]:
    """Idempotent removal, for tests and uninstalls; the rules removed."""
    removed = []
    for tool in TOOLS:
        for rule in _rules(veth_prefix):
            copies = delete_every(tool, (), "FORWARD", rule)
            removed += [f"{tool} FORWARD {' '.join(rule)}"] * copies
    return removed


def _masquerade_rule(veth_prefix: str) -> list[str]:
    mark = f"{MARK_MASQUERADE:#x}/{MARK_MASQUERADE:#x}"
    comment = f"pycilium {veth_prefix} outbound"
    match = ["-m", "mark", "--mark", mark, "!", "-o", veth_prefix + "+"]
    return [*match, "-m", "comment", "--comment", comment, "-j", "MASQUERADE"]


def masquerade_outbound(veth_prefix: str) -> None:
    """Idempotent: the masquerade rule is added once, to the end of nat POSTROUTING."""
    rule = _masquerade_rule(veth_prefix)
    for tool in TOOLS:
        if _run(tool, "-t", "nat", "-C", "POSTROUTING", *rule).returncode == 0:
            continue
        result = _run(tool, "-t", "nat", "-A", "POSTROUTING", *rule)
        if result.returncode != 0:
            raise DatapathError(f"{tool} -t nat -A POSTROUTING: {result.stderr.strip()}")


def remove_masquerade(veth_prefix: str) -> list[str]:
    """Idempotent removal, for tests and uninstalls; the rules removed."""
    removed = []
    rule = _masquerade_rule(veth_prefix)
    for tool in TOOLS:
        copies = delete_every(tool, ("-t", "nat"), "POSTROUTING", rule)
        removed += [f"{tool} -t nat POSTROUTING masquerade of {veth_prefix}+"] * copies
    return removed
