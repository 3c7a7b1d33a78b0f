"""parse_rules: JSON or YAML text -> validated Rule values, or one PolicyError naming the spot.

Each helper takes (value, path) and raises _Invalid(path, message); parse_rules adds the
source and the rule ("web.yaml: rule 2 (web-policy): ingress[0].toPorts[0]...: ...").
"""

import difflib
import ipaddress
import re

from .load import Duplicated, NotDecimal, load_documents
from .model import (
    ENTITIES,
    OPERATORS,
    RESERVED_NAMES,
    RESERVED_SOURCE,
    RULE_PROTOCOLS,
    CIDRSet,
    PeerRule,
    PolicyError,
    PortProtocol,
    PortRule,
    Requirement,
    Rule,
    Selector,
    split_key,
)

MAX_RANGE = 1024
API_VERSION = "cilium.io/v2"
DOCUMENT_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
_EXPECTED = "expected a rule, a list of rules or a CiliumNetworkPolicy"
_DOCUMENT_FIELDS = ("apiVersion", "kind", "metadata", "spec", "specs")
_RULE_FIELDS = ("endpointSelector", "labels", "description", "ingress", "egress")
# Cilium's fields that pycilium does not enforce, and why: refused by name, never guessed at.
_K8S_METADATA = {
    "namespace": "Docker has no namespaces: a rule here applies to every container",
    "labels": "Kubernetes object labels; give the rule's labels in its labels field",
    "annotations": "Kubernetes object annotations",
}
_K8S_RULE = {
    "nodeSelector": "host policies select Kubernetes nodes",
    "ingressDeny": "deny sections",
    "egressDeny": "deny sections",
    "enableDefaultDeny": "an endpoint a rule selects always denies what no rule allows",
    "log": "policy logging",
}
_K8S_SECTION = {
    "toServices": "Kubernetes services",
    "toFQDNs": "DNS names need Cilium's DNS proxy",
    "fromGroups": "cloud provider groups",
    "toGroups": "cloud provider groups",
    "fromNodes": "Kubernetes nodes",
    "toNodes": "Kubernetes nodes",
    "icmps": "ICMP types; use protocol ICMP in toPorts",
    "authentication": "mutual authentication",
}
_K8S_PORT_RULE = {
    "rules": "L7 rules (HTTP, Kafka, DNS) need Cilium's proxy",
    "originatingTLS": "TLS interception",
    "terminatingTLS": "TLS interception",
    "serverNames": "TLS server names",
    "listener": "Envoy listeners",
}
_K8S_CIDR_SET = {
    "cidrGroupRef": "CiliumCIDRGroup resources",
    "cidrGroupSelector": "CiliumCIDRGroup resources",
}
_ENFORCED = "pycilium enforces TCP, UDP, ICMP and ANY"
_K8S_PROTOCOLS = {
    "SCTP": _ENFORCED,
    "ICMPV6": "ICMP here covers ICMP and ICMPv6",
    "VRRP": _ENFORCED,
    "IGMP": _ENFORCED,
}
# Cilium's entities and label sources that have no meaning on Docker.
_K8S_ENTITIES = {
    "remote-node": "cluster nodes other than this host",
    "kube-apiserver": "the Kubernetes API server",
    "ingress": "Cilium's ingress proxy",
    "health": "Cilium's health endpoints",
    "world-ipv4": "use world",
    "world-ipv6": "use world",
}
_K8S_SOURCES = {
    "k8s": "Docker containers have no Kubernetes labels; match a Docker label with app"
    " or container:app",
    "cidr": "use fromCIDR or toCIDR",
    "fqdn": "DNS names need Cilium's DNS proxy",
}
_NO_SECTION = (
    "a rule needs ingress or egress (Cilium refuses a rule without either, as it enforces"
    " nothing); write 'ingress: [{}]' for default deny at ingress"
)
_EMPTY_SECTIONS = (
    "an empty list enforces nothing in Cilium (the rule does not apply at {0}); write"
    " '{0}: [{{}}]' for default deny at {0}, or leave {0} out"
)
_KINDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


class _Invalid(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)


def parse_rules(text: str, source: str) -> list[Rule]:
    """The rules of a file: one rule, a list of rules, CiliumNetworkPolicy or
    CiliumClusterwideNetworkPolicy documents, or several YAML documents of these."""
    documents = load_documents(text, source)
    if len(documents) == 1:
        return _document(documents[0], source)
    if not documents:
        raise PolicyError(f"{source}: {_EXPECTED}, got null")
    return [
        rule
        for number, document in enumerate(documents)
        for rule in _document(document, f"{source}: document {number}")
    ]


def _document(data, where: str) -> list[Rule]:
    if _is_kubernetes(data):
        return _cilium_document(data, where)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise PolicyError(f"{where}: {_EXPECTED}, got {_kind(data)}")
    rules = []
    for index, item in enumerate(data):
        if _is_kubernetes(item):
            rules += _cilium_document(item, f"{where}: document {index}")
        else:
            rules.append(_rule_at(item, f"{where}: rule {index}"))
    return rules


def _is_kubernetes(data) -> bool:
    return isinstance(data, dict) and ("apiVersion" in data or "kind" in data)


def _cilium_document(node, where: str) -> list[Rule]:
    """A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy: its rules, named after it."""
    try:
        node = _fields(node, "", _DOCUMENT_FIELDS, ("apiVersion", "kind", "metadata"))
        api_version = _string(node["apiVersion"], "apiVersion")
        if api_version != API_VERSION:
            raise _Invalid("apiVersion", f"{api_version!r} is not supported ({API_VERSION})")
        kind = _string(node["kind"], "kind")
        if kind not in DOCUMENT_KINDS:
            raise _Invalid("kind", f"{kind} is not supported ({', '.join(DOCUMENT_KINDS)})")
        metadata = _fields(node["metadata"], "metadata", ("name",), ("name",), _K8S_METADATA)
        name = _string(metadata["name"], "metadata.name")
        specs = [("spec", node["spec"])] if "spec" in node else []
        more = _expect(node.get("specs", []), list, "specs")
        specs += [(f"specs[{i}]", spec) for i, spec in enumerate(more)]
        if not specs:
            raise _Invalid("", "needs a rule in spec or specs")
    except _Invalid as error:
        raise PolicyError(f"{where}: {error}") from None
    return [_rule_at(spec, f"{where}: {kind} {name}: {path}", name) for path, spec in specs]


def _rule_at(item, where: str, document_name: str | None = None) -> Rule:
    """A rule; one from a document without a name label gets the document's name."""
    try:
        node = _fields(item, "", _RULE_FIELDS, ("endpointSelector",), _K8S_RULE)
        labels = _labels(node.get("labels", []), "labels")
    except _Invalid as error:
        raise PolicyError(f"{where}: {error}") from None
    name = next((v for k, v in labels if k == "name"), None)
    if name is None and document_name is not None:
        labels += (("name", document_name),)
    elif name is not None and name != document_name:
        where += f" ({name})"
    try:
        return _rule(node, labels)
    except _Invalid as error:
        raise PolicyError(f"{where}: {error}") from None


def _rule(node: dict, labels) -> Rule:
    rule = Rule(
        endpoint_selector=_selector(node["endpointSelector"], "endpointSelector", subject=True),
        labels=labels,
        description=_string(node.get("description", ""), "description"),
        ingress=_sections(node, "ingress", "from"),
        egress=_sections(node, "egress", "to"),
    )
    if rule.ingress is None and rule.egress is None:
        raise _Invalid("", _NO_SECTION)
    return rule


def _sections(node: dict, key: str, side: str):
    if key not in node:
        return None
    sections = _list(node[key], key, lambda v, p: _section(v, p, side))
    if not sections:
        # Refused rather than read: pycilium read it as default deny, Cilium as nothing.
        raise _Invalid(key, _EMPTY_SECTIONS.format(key))
    return sections


def _section(node, path: str, side: str) -> PeerRule:
    names = ("Endpoints", "Requires", "CIDR", "CIDRSet", "Entities")
    node = _fields(node, path, [side + n for n in names] + ["toPorts"], (), _K8S_SECTION)

    def get(name, parse):
        """None when absent: an explicitly empty list selects no peer."""
        key = side + name
        return _list(node[key], _at(path, key), parse) if key in node else None

    section = PeerRule(
        endpoints=get("Endpoints", _selector),
        requires=get("Requires", _selector) or (),
        cidr=get("CIDR", _cidr),
        cidr_set=get("CIDRSet", _cidr_set),
        entities=get("Entities", _entity),
        to_ports=_list(node.get("toPorts", []), _at(path, "toPorts"), _port_rule),
    )
    peers = zip(("Endpoints", "CIDR", "CIDRSet", "Entities"), section.peer_fields(), strict=True)
    given = [side + name for name, field in peers if field]
    if len(given) > 1:
        # Cilium refuses this too; reading it as OR or as AND would surprise someone.
        raise _Invalid(
            path,
            f"combining {given[0]} and {given[1]} in one section is not supported (Cilium"
            " refuses it too); write one section for each",
        )
    return section


def _selector(node, path: str, subject: bool = False) -> Selector:
    """subject: the endpointSelector, which must select containers only."""
    node = _fields(node, path, ("matchLabels", "matchExpressions"))
    labels = _expect(node.get("matchLabels", {}), dict, _at(path, "matchLabels"))
    pairs = tuple(sorted(_label_pair(k, v, _at(path, "matchLabels")) for k, v in labels.items()))
    expressions = _list(node.get("matchExpressions", []), _at(path, "matchExpressions"), _req)
    for key, value in pairs:
        _check_source(key, value, _at(path, f"matchLabels.{key}"), subject)
    for i, requirement in enumerate(expressions):
        for value in requirement.values or ("",):
            _check_source(requirement.key, value, _at(path, f"matchExpressions[{i}]"), subject)
    return Selector(pairs, expressions)


def _check_source(key: str, value: str, path: str, subject: bool) -> None:
    """A key's source must mean on Docker what it means in Cilium; else it is refused."""
    source, name = split_key(key)
    if source in _K8S_SOURCES:
        raise _Invalid(path, f"label source {source!r} is not supported ({_K8S_SOURCES[source]})")
    if source and source != RESERVED_SOURCE:
        hint = f"; a Docker label key with ':' is written any:{key}"
        raise _Invalid(path, f"unknown label source {source!r} (any, container, reserved{hint})")
    if source != RESERVED_SOURCE:
        return
    if subject:
        raise _Invalid(
            path,
            f"{key} selects a reserved identity, not a container (pycilium enforces policy on"
            " containers only: host policies are not supported)",
        )
    if name not in RESERVED_NAMES:
        names = ", ".join(f"reserved:{n}" for n in RESERVED_NAMES)
        raise _Invalid(path, f"{key} is not supported (there is no such identity here: {names})")
    if value:
        raise _Invalid(path, f'{key} has no value (write {key}: "")')


def _label_pair(key, value, path: str) -> tuple[str, str]:
    _string(key, path)
    return key, _string(value, f"{path}.{key}")


def _req(node, path: str) -> Requirement:
    node = _fields(node, path, ("key", "operator", "values"), required=("key", "operator"))
    key = _string(node["key"], _at(path, "key"))
    operator = _choice(node["operator"], _at(path, "operator"), OPERATORS, "an operator")
    values = _list(node.get("values", []), _at(path, "values"), _string)
    if operator in ("In", "NotIn") and not values:
        raise _Invalid(_at(path, "values"), f"operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise _Invalid(_at(path, "values"), f"operator {operator} takes no values")
    return Requirement(key, operator, tuple(sorted(set(values))))


def _labels(node, path: str) -> tuple[tuple[str, str], ...]:
    return _list(node, path, _label)


def _label(node, path: str) -> tuple[str, str]:
    if isinstance(node, str):
        key, _, value = node.partition("=")
    else:
        node = _fields(node, path, ("key", "value", "source"), required=("key",))
        key = _string(node["key"], _at(path, "key"))
        value = _string(node.get("value", ""), _at(path, "value"))
    if not key:
        raise _Invalid(path, "a label needs a key")
    return key, value


def _cidr(value, path: str) -> str:
    _expect(value, str, path)
    try:
        return str(ipaddress.ip_network(value))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(path, f"{value!r} is not a CIDR prefix") from None
    raise _Invalid(path, f"{value!r} has host bits set (did you mean {network}?)")


def _cidr_set(node, path: str) -> CIDRSet:
    node = _fields(node, path, ("cidr", "except"), ("cidr",), _K8S_CIDR_SET)
    cidr = _cidr(node["cidr"], _at(path, "cidr"))
    excepts = _list(node.get("except", []), _at(path, "except"), _cidr)
    outer = ipaddress.ip_network(cidr)
    for i, text in enumerate(excepts):
        inner = ipaddress.ip_network(text)
        if inner.version != outer.version or not inner.subnet_of(outer):
            raise _Invalid(_at(path, f"except[{i}]"), f"{text} is not inside {cidr}")
    return CIDRSet(cidr, excepts)


def _entity(value, path: str) -> str:
    if isinstance(value, str) and value.lower() in _K8S_ENTITIES:
        raise _Invalid(path, f"entity {value} is not supported ({_K8S_ENTITIES[value.lower()]})")
    return _choice(value, path, ENTITIES, "an entity", fold=str.lower)


def _port_rule(node, path: str) -> PortRule:
    node = _fields(node, path, ("ports",), ("ports",), _K8S_PORT_RULE)
    ports = _list(node["ports"], _at(path, "ports"), _port)
    if not ports:
        raise _Invalid(_at(path, "ports"), "needs at least one port entry")
    return PortRule(ports)


def _port(node, path: str) -> PortProtocol:
    node = _fields(node, path, ("port", "endPort", "protocol"))
    protocol = _protocol(node.get("protocol", "ANY"), _at(path, "protocol"))
    start, end = _port_range(node.get("port", 0), _at(path, "port"))
    if "endPort" in node:
        if end:
            raise _Invalid(path, "give a range as 'a-b' or with endPort, not both")
        end = _port_number(node["endPort"], _at(path, "endPort"))
        if not start:
            raise _Invalid(_at(path, "endPort"), "endPort needs a port")
    _check_range(start, end, path)
    if protocol == "ICMP" and start:
        raise _Invalid(_at(path, "port"), "ICMP takes no port (use 0 or leave it out)")
    return PortProtocol(start, end if end != start else 0, protocol)


def _protocol(value, path: str) -> str:
    _string(value, path)
    if value.upper() in _K8S_PROTOCOLS:
        raise _Invalid(path, f"protocol {value} is not supported ({_K8S_PROTOCOLS[value.upper()]})")
    return _choice(value, path, RULE_PROTOCOLS, "a protocol")


def _port_range(value, path: str) -> tuple[int, int]:
    """Cilium's port is a string; an integer written in decimal means the same here."""
    _unmarked(value, path)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(path, f"expected a string, got {_kind(value)}")
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", str(value))
    if match is None and re.fullmatch(r"[a-zA-Z0-9-]*[a-zA-Z][a-zA-Z0-9-]*", str(value)):
        raise _Invalid(path, f"named port {value!r} is not supported (Docker has no port names)")
    if match is None:
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    start = int(match[1])
    end = int(match[2]) if match[2] else 0
    if start > 65535 or end > 65535 or (end and not start):
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    return start, end


def _port_number(value, path: str) -> int:
    """Cilium's endPort is an integer."""
    _unmarked(value, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(path, f"expected an integer, got {_kind(value)}")
    if not 1 <= value <= 65535:
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    return value


def _check_range(start: int, end: int, path: str) -> None:
    if end and end < start:
        raise _Invalid(path, f"range {start}-{end} ends before it starts")
    if end and end - start + 1 > MAX_RANGE:
        count = end - start + 1
        raise _Invalid(path, f"range {start}-{end} has {count} ports (at most {MAX_RANGE})")


def _choice(value, path: str, choices, what: str, fold=str.upper) -> str:
    _expect(value, str, path)
    by_folded = {fold(c): c for c in choices}
    if fold(value) not in by_folded:
        raise _Invalid(path, f"{value!r} is not {what} ({', '.join(choices)})")
    return by_folded[fold(value)]


def _fields(node, path: str, allowed, required=(), unsupported=None) -> dict:
    _expect(node, dict, path)
    for key in node:
        if key in (unsupported or {}):
            raise _Invalid(path, f"{key} is not supported ({unsupported[key]})")
        if key not in allowed:
            raise _Invalid(path, f"unknown field {key!r}{_hint(key, allowed)}")
    for key in required:
        if key not in node:
            raise _Invalid(path, f"missing field {key!r}")
    return node


def _hint(key, allowed) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected {', '.join(allowed)})"


def _list(node, path: str, parse) -> tuple:
    _expect(node, list, path)
    return tuple(parse(item, f"{path}[{i}]") for i, item in enumerate(node))


def _string(value, path: str) -> str:
    _unmarked(value, path)
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, int | float | bool) else ""
        raise _Invalid(path, f"expected a string, got {_kind(value)}{hint}")
    return value


def _expect(value, kind: type, path: str):
    _unmarked(value, path)
    if not isinstance(value, kind):
        raise _Invalid(path, f"expected {_KINDS[kind]}, got {_kind(value)}")
    return value


def _unmarked(value, path: str) -> None:
    """Refuse what the loader marked: a duplicate key, a number not written in decimal."""
    if isinstance(value, Duplicated):
        raise _Invalid(path, f"duplicate key {value.duplicate!r}")
    if isinstance(value, NotDecimal):
        problem = "is a YAML number not written in decimal (quote it, or write it in decimal)"
        raise _Invalid(path, f"{value.text} {problem}")


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
