"""Rule sets and flows for the differential test (policy engine vs real packets).

Random cases are seeded: case n of a seed is the same on every run, so a failing case can
be rerun alone and its rules read back from the failure message. Fixed cases are written
by hand with their verdicts (FixedCase) and probe every pair of endpoints.
"""

import itertools
import json
import random
from dataclasses import dataclass

import yaml

import datapath
from driver.control import policy

NETWORK = "difftest"
# The endpoints' label sets (besides NETWORK_LABEL): app=b and tier=x each select two of
# them, the last has no tier (for Exists / DoesNotExist / NotIn).
ENDPOINT_LABELS = (
    {"app": "a", "tier": "x"},
    {"app": "b", "tier": "x"},
    {"app": "b", "tier": "y"},
    {"app": "c"},
)
FIRST_IDENTITY = 4100
# Values a selector may name; "z" matches no endpoint.
VALUES = {"app": ["a", "b", "c", "z"], "tier": ["x", "y"]}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PORTS = (
    {"port": "80", "protocol": "TCP"},
    {"port": "81", "protocol": "TCP"},
    {"port": "53", "protocol": "UDP"},
    {"port": "53", "protocol": "ANY"},
    {"port": "81", "protocol": "UDP"},
    {"port": "80"},  # protocol left out: ANY
    {"port": "80", "endPort": 81, "protocol": "TCP"},
    {"protocol": "ICMP"},
    {"protocol": "TCP"},
)
ENTITIES = ("all", "cluster", "host", "world")
MODES = ("default", "always")  # "never" only turns enforcement off: not worth packets
MODE_WEIGHTS = (3, 1)
# What the test endpoints serve (echo servers on both families), and so what flows probe.
SERVICES = (("tcp", 80), ("tcp", 81), ("tcp", 53), ("udp", 53), ("udp", 81), ("icmp", 0))
IP_PROTO = {"tcp": 6, "udp": 17}
ICMP_PROTO = {4: 1, 6: 58}
FLOWS_PER_CASE = 8


@dataclass(frozen=True)
class Flow:
    src: int  # index of the endpoint (into ENDPOINT_LABELS, or a FixedCase's labels)
    dst: int
    proto: str  # "tcp", "udp" or "icmp" (echo request)
    port: int  # 0 for icmp
    version: int  # 4 or 6

    @property
    def protocol(self) -> int:
        """The IANA number trace() and the policy keys use."""
        return ICMP_PROTO[self.version] if self.proto == "icmp" else IP_PROTO[self.proto]

    def describe(self) -> str:
        what = "ICMP echo" if self.proto == "icmp" else f"{self.proto.upper()}/{self.port}"
        return f"ep{self.src} -> ep{self.dst} {what} IPv{self.version}"


@dataclass(frozen=True)
class Case:
    number: int
    rules: list
    text: str
    source: str  # file name given to parse_rules: case<n>.yaml or .json
    mode: str
    flows: tuple[Flow, ...]


def identities(labels: tuple[dict[str, str], ...] = ENDPOINT_LABELS) -> list[policy.Identity]:
    """The endpoints' identities: labels (and NETWORK_LABEL) for FIRST_IDENTITY, ..."""
    return [
        policy.Identity(FIRST_IDENTITY + i, {**own, policy.NETWORK_LABEL: NETWORK})
        for i, own in enumerate(labels)
    ]


def trace_labels(labels) -> dict[str, str]:
    """A container's labels written as `policy trace --src` takes them: a Docker label
    whose key has a ':' is any:KEY (reserved:world alone would be the world)."""
    return {(f"any:{k}" if ":" in k else k): v for k, v in labels.items()}


@dataclass(frozen=True)
class FixedCase:
    """Rules (YAML) with the verdicts written beside them. Every ordered pair of endpoints
    probes each of kinds ("tcp/80", "udp/53", "icmp"; IPv6 when src + dst is odd, else
    IPv4); blocked names the flows that must not pass as "SRC>DST" or "SRC>DST KIND" with
    endpoint numbers or * ("*>0": every flow into ep0), and every other flow must pass.
    labels: the endpoints' labels for this case (their identity numbers stay the same)."""

    name: str
    text: str
    blocked: tuple[str, ...]
    kinds: tuple[str, ...] = ("tcp/80",)
    labels: tuple[dict[str, str], ...] = ENDPOINT_LABELS

    def flows(self) -> tuple[Flow, ...]:
        out = []
        for src, dst in itertools.permutations(range(len(self.labels)), 2):
            for kind in self.kinds:
                proto, _, port = kind.partition("/")
                out.append(Flow(src, dst, proto, int(port or 0), 6 if (src + dst) % 2 else 4))
        return tuple(out)

    def allows(self, flow: Flow) -> bool:
        """The verdict written in the case."""
        return not any(blocks(pattern, flow) for pattern in self.blocked)


def blocks(pattern: str, flow: Flow) -> bool:
    """Whether a FixedCase.blocked pattern names the flow."""
    pair, _, kind = pattern.partition(" ")
    src, dst = pair.split(">")
    flow_kind = flow.proto if flow.proto == "icmp" else f"{flow.proto}/{flow.port}"
    return src in ("*", str(flow.src)) and dst in ("*", str(flow.dst)) and kind in ("", flow_kind)


def make_case(seed: int, number: int) -> Case:
    rng = random.Random(f"{seed}:{number}")
    rules = [_rule(rng, i) for i in range(rng.randint(1, 4))]
    if number % 2:
        text, source = json.dumps(rules, indent=1), f"case{number}.json"
    else:
        text, source = yaml.safe_dump(rules, sort_keys=False), f"case{number}.yaml"
    mode = rng.choices(MODES, MODE_WEIGHTS)[0]
    flows = tuple(_flow(rng) for _ in range(FLOWS_PER_CASE))
    return Case(number, rules, text, source, mode, flows)


def _flow(rng: random.Random) -> Flow:
    src, dst = rng.sample(range(len(ENDPOINT_LABELS)), 2)
    proto, port = rng.choice(SERVICES)
    return Flow(src, dst, proto, port, rng.choice((6, 4)))


def _rule(rng: random.Random, index: int) -> dict:
    rule = {"endpointSelector": _selector(rng), "labels": [{"key": "name", "value": f"r{index}"}]}
    roll = rng.random()
    directions = ["ingress"] if roll < 0.4 else ["egress"] if roll < 0.7 else ["ingress", "egress"]
    for direction in directions:
        side = "from" if direction == "ingress" else "to"
        if rng.random() < 0.08:
            rule[direction] = [{}]  # default deny: enforces, allows nothing
        else:
            rule[direction] = [_section(rng, side) for _ in range(rng.randint(1, 2))]
    return rule


def _section(rng: random.Random, side: str) -> dict:
    if rng.random() < 0.08:
        return {}  # allows nothing
    section = {}
    roll = rng.random()
    if roll < 0.7:
        section[f"{side}Endpoints"] = [_selector(rng) for _ in range(rng.randint(1, 2))]
    elif roll < 0.78:
        section[f"{side}Endpoints"] = []  # selects no peer: the section allows nothing
    elif roll < 0.86:
        section[f"{side}Entities"] = [rng.choice(ENTITIES)]
    # else no peer field: toPorts alone, any peer
    if rng.random() < 0.07:
        section[f"{side}Requires"] = [_selector(rng)]
    if rng.random() < 0.6 or not section:
        ports = rng.sample(PORTS, rng.randint(1, 2))
        section["toPorts"] = [{"ports": [dict(p) for p in ports]}]
    return section


def _selector(rng: random.Random) -> dict:
    if rng.random() < 0.1:
        return {}  # every endpoint
    selector = {}
    if rng.random() < 0.65:
        keys = rng.choice((("app",), ("tier",), ("app", "tier")))
        selector["matchLabels"] = {k: rng.choice(VALUES[k]) for k in keys}
    if not selector or rng.random() < 0.3:
        selector["matchExpressions"] = [_expression(rng) for _ in range(rng.randint(1, 2))]
    return selector


def _expression(rng: random.Random) -> dict:
    key = rng.choice(("app", "tier"))
    operator = rng.choice(OPERATORS)
    if operator in ("Exists", "DoesNotExist"):
        return {"key": key, "operator": operator}
    return {"key": key, "operator": operator, "values": rng.sample(VALUES[key], rng.randint(1, 2))}


# policy engine -> datapath


_DIRECTIONS = {policy.INGRESS: datapath.INGRESS, policy.EGRESS: datapath.EGRESS}


def to_datapath_key(key: policy.PolicyKey) -> datapath.PolicyKey:
    return datapath.PolicyKey(
        identity=key.identity,
        dport=key.dport,
        protocol=key.protocol,
        direction=_DIRECTIONS[key.direction],
    )


def keys_allow(src: policy.EndpointPolicy, dst: policy.EndpointPolicy, ids, flow: Flow) -> bool:
    """The verdict of compute()'s keys, probed the way the BPF program probes them."""
    src_id, dst_id = ids[flow.src].id, ids[flow.dst].id
    if src.egress_enforced and not policy.first_match(
        src.keys, dst_id, flow.port, flow.protocol, policy.EGRESS
    ):
        return False
    return not dst.ingress_enforced or bool(
        policy.first_match(dst.keys, src_id, flow.port, flow.protocol, policy.INGRESS)
    )


def describe_keys(keys) -> list[str]:
    """One line per key, sorted: direction, peer identity, protocol, port."""
    names = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
    lines = []
    for k in sorted(keys, key=lambda k: (k.direction, k.identity, k.protocol, k.dport)):
        side = "ingress" if k.direction == policy.INGRESS else "egress"
        port = f"/{k.dport}" if k.dport else ""
        lines.append(f"{side} id={k.identity} {names.get(k.protocol, k.protocol)}{port}")
    return lines


# real packets

_icmp_ids = itertools.count(0x4000)


def probe(container, addr, flow: Flow, timeout: float) -> bool:
    """Whether a new flow of this kind from container to addr gets its answer. ICMP echo ids
    are distinct per probe, so no earlier echo's conntrack entry can answer for it."""
    if flow.proto == "icmp":
        ident = str(next(_icmp_ids) & 0xFFFF)
        return container.ping(addr, "-e", ident, timeout=timeout)
    return container.exchange(addr, flow.port, flow.proto, timeout=timeout)
