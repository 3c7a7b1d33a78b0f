"""policy trace: the verdict the datapath would give a new flow, explained line by line.

Uses resolve() (the same keys compute() emits, before compaction, which keeps the verdict and
names more rules) and the datapath's lookup order: egress of the source, then ingress of the
destination; the flow passes if both do.
"""

from collections.abc import Callable
from dataclasses import dataclass

from datapath.abi import (
    EGRESS,
    FIRST_ENDPOINT_IDENTITY,
    INGRESS,
    PORT_PROTOCOLS,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTOCOL_NAMES,
)

from .compute import SYNTHETIC, Peers, first_match, resolve
from .model import Identity, PolicyError


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Flow:
    src: Identity
    dst: Identity
    dport: int
    protocol: int


def trace_flow(flow: Flow, peers: Peers, selecting: Callable, mode: str) -> Verdict:
    """selecting(labels) -> [(name, rule)] for the rules whose endpointSelector matches."""
    _check_flow(flow)
    checks = [
        _check(EGRESS, flow.src, flow.dst, flow, peers, selecting, mode),
        _check(INGRESS, flow.dst, flow.src, flow, peers, selecting, mode),
    ]
    allowed = all(ok for ok, _, _ in checks)
    lines = [line for _, line, _ in checks]
    lines.append(f"verdict: {'allowed' if allowed else 'denied'}")
    names = tuple(dict.fromkeys(n for _, _, found in checks for n in found))
    return Verdict(allowed, "\n".join(lines), names)


def _check(direction, local: Identity, remote: Identity, flow: Flow, peers, selecting, mode):
    side = "egress of src" if direction == EGRESS else "ingress of dst"
    side = f"{side} ({peers.describe(local.id)})"
    if local.id < FIRST_ENDPOINT_IDENTITY:
        return True, f"{side}: not an endpoint, no policy here", ()
    resolved = resolve(local, selecting(local.labels), peers, mode)
    enforced = resolved.ingress_enforced if direction == INGRESS else resolved.egress_enforced
    if not enforced:
        return True, f"{side}: not enforced ({_why_open(direction, mode)})", ()
    key = first_match(resolved.origins, remote.id, flow.dport, flow.protocol, direction)
    if key is None:
        what = f"{peers.describe(remote.id)} on {_flow_text(flow)}"
        return False, f"{side}: no rule allows {what}{_selected_by(resolved.rules)}", ()
    origins = resolved.origins[key]
    names = tuple(o for o in origins if o not in SYNTHETIC)
    who = [f"rule {n}" for n in names] + [o for o in origins if o in SYNTHETIC]
    what = f"{peers.describe(key.identity)} on {_key_text(key)}"
    return True, f"{side}: {', '.join(who)} allows {what}", names


def _why_open(direction: int, mode: str) -> str:
    if mode == "never":
        return "mode never"
    return "no rule selecting it has an egress section"


def _selected_by(names) -> str:
    return f" (selected by: {', '.join(names)})" if names else ""


def _protocol_text(number: int) -> str:
    """Cilium's spelling: TCP, UDP, ICMP, ICMPv6; any other (0 too) by its number."""
    if number == PROTO_ANY or number not in PROTOCOL_NAMES:
        return f"protocol {number}"
    return PROTOCOL_NAMES[number].upper().replace("V6", "v6")


def _flow_text(flow: Flow) -> str:
    name = _protocol_text(flow.protocol)
    return f"{name}/{flow.dport}" if flow.protocol in PORT_PROTOCOLS else name


def _key_text(key) -> str:
    if not key.protocol:
        return "any protocol and port"
    name = _protocol_text(key.protocol)
    if key.protocol in (PROTO_ICMP, PROTO_ICMPV6):
        return name
    return f"{name}/{key.dport}" if key.dport else f"{name} (any port)"


def _check_flow(flow: Flow) -> None:
    if not 0 <= flow.dport <= 65535:
        raise PolicyError(f"trace: {flow.dport} is not a port (0-65535)")
    if not 0 <= flow.protocol <= 255:
        raise PolicyError(f"trace: {flow.protocol} is not an IP protocol number (0-255)")
