"""Netfilter's say on forwarded traffic of our veths.

Docker sets the IPv4 FORWARD policy to DROP and accepts only its own bridges, so traffic
routed between an endpoint and anything behind the host (another namespace, the outside)
would die there. Policy is enforced in BPF; netfilter just has to let endpoint traffic
through. Rules are appended after DOCKER-USER, so a user's own DOCKER-USER rules still
come first. The commands take fixed arguments and the validated veth prefix only.
"""

import subprocess

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


def remove_forwarding(veth_prefix: str) -> list[str]:
    """Idempotent removal, for tests and uninstalls; the rules removed."""
    removed = []
    for tool in TOOLS:
        for rule in _rules(veth_prefix):
            while _run(tool, "-C", "FORWARD", *rule).returncode == 0:
                _run(tool, "-D", "FORWARD", *rule)
                removed.append(f"{tool} FORWARD {' '.join(rule)}")
    return removed
