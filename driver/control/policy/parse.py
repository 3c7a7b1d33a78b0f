"""parse_rules: JSON or YAML text -> validated Rule values, or one PolicyError naming the spot.

Each helper takes (value, path) and raises _Invalid(path, message); parse_rules adds the
source and the rule ("web.yaml: rule 2 (web-policy): ingress[0].toPorts[0]...: ...").
"""

import difflib
import ipaddress
import json
import re

import yaml

from .model import (
    ENTITIES,
    OPERATORS,
    RULE_PROTOCOLS,
    CIDRSet,
    PeerRule,
    PolicyError,
    PortProtocol,
    PortRule,
    Requirement,
    Rule,
    Selector,
)

MAX_RANGE = 1024
# Values in a loaded document, counting each YAML alias as often as it is used: a few
# kilobytes of nested aliases ("billion laughs") would otherwise expand to billions.
MAX_NODES = 2_000_000
_RULE_FIELDS = ("endpointSelector", "labels", "description", "ingress", "egress")
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
    data = _load(text, source)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise PolicyError(f"{source}: expected a rule object or a list of rules, got {_kind(data)}")
    return [_rule_at(item, index, source) for index, item in enumerate(data)]


def _load(text: str, source: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply") from None
    except ValueError as json_error:
        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise PolicyError(f"{source}: nested too deeply") from None
        except yaml.YAMLError as yaml_error:
            if text.lstrip()[:1] in ("[", "{"):
                raise PolicyError(f"{source}: not JSON: {json_error}") from None
            raise PolicyError(f"{source}: not JSON or YAML: {_yaml_problem(yaml_error)}") from None
        _check_size(data, source)
        return data


def _check_size(data, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_NODES values (or refer to themselves)."""
    stack, count = [data], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise PolicyError(f"{source}: more than {MAX_NODES} values once YAML aliases expand")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1} column {mark.column + 1}: {problem}"


def _rule_at(item, index: int, source: str) -> Rule:
    where = f"{source}: rule {index}"
    try:
        node = _fields(item, "", _RULE_FIELDS, required=("endpointSelector",))
        labels = _labels(node.get("labels", []), "labels")
    except _Invalid as error:
        raise PolicyError(f"{where}: {error}") from None
    name = next((v for k, v in labels if k == "name"), None)
    if name is not None:
        where += f" ({name})"
    try:
        return _rule(node, labels)
    except _Invalid as error:
        raise PolicyError(f"{where}: {error}") from None


def _rule(node: dict, labels) -> Rule:
    return Rule(
        endpoint_selector=_selector(node["endpointSelector"], "endpointSelector"),
        labels=labels,
        description=_string(node.get("description", ""), "description"),
        ingress=_sections(node, "ingress", "from"),
        egress=_sections(node, "egress", "to"),
    )


def _sections(node: dict, key: str, side: str):
    if key not in node:
        return None
    return _list(node[key], key, lambda v, p: _section(v, p, side))


def _section(node, path: str, side: str) -> PeerRule:
    names = ("Endpoints", "Requires", "CIDR", "CIDRSet", "Entities")
    node = _fields(node, path, [side + n for n in names] + ["toPorts"])

    def get(name, parse):
        key = side + name
        return _list(node[key], _at(path, key), parse) if key in node else ()

    endpoints = None
    if side + "Endpoints" in node:
        endpoints = get("Endpoints", _selector) or (Selector(),)  # [] selects every endpoint
    return PeerRule(
        endpoints=endpoints,
        requires=get("Requires", _selector),
        cidr=get("CIDR", _cidr),
        cidr_set=get("CIDRSet", _cidr_set),
        entities=get("Entities", _entity),
        to_ports=_list(node.get("toPorts", []), _at(path, "toPorts"), _port_rule),
    )


def _selector(node, path: str) -> Selector:
    node = _fields(node, path, ("matchLabels", "matchExpressions"))
    labels = _expect(node.get("matchLabels", {}), dict, _at(path, "matchLabels"))
    pairs = tuple(sorted(_label_pair(k, v, _at(path, "matchLabels")) for k, v in labels.items()))
    expressions = _list(node.get("matchExpressions", []), _at(path, "matchExpressions"), _req)
    return Selector(pairs, expressions)


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
    node = _fields(node, path, ("cidr", "except"), required=("cidr",))
    cidr = _cidr(node["cidr"], _at(path, "cidr"))
    excepts = _list(node.get("except", []), _at(path, "except"), _cidr)
    outer = ipaddress.ip_network(cidr)
    for i, text in enumerate(excepts):
        inner = ipaddress.ip_network(text)
        if inner.version != outer.version or not inner.subnet_of(outer):
            raise _Invalid(_at(path, f"except[{i}]"), f"{text} is not inside {cidr}")
    return CIDRSet(cidr, excepts)


def _entity(value, path: str) -> str:
    return _choice(value, path, ENTITIES, "an entity", fold=str.lower)


def _port_rule(node, path: str) -> PortRule:
    node = _fields(node, path, ("ports",), required=("ports",))
    ports = _list(node["ports"], _at(path, "ports"), _port)
    if not ports:
        raise _Invalid(_at(path, "ports"), "needs at least one port entry")
    return PortRule(ports)


def _port(node, path: str) -> PortProtocol:
    node = _fields(node, path, ("port", "endPort", "protocol"))
    protocol = _choice(
        node.get("protocol", "ANY"), _at(path, "protocol"), RULE_PROTOCOLS, "a protocol"
    )
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


def _port_range(value, path: str) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(path, f"expected a string or an integer, got {_kind(value)}")
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", str(value).strip())
    if match is None:
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    start = int(match[1])
    end = int(match[2]) if match[2] else 0
    if start > 65535 or end > 65535 or (end and not start):
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    return start, end


def _port_number(value, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(path, f"expected an integer, got {_kind(value)}")
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _Invalid(path, f"{value!r} is not a port (1-65535)")
    return int(text)


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


def _fields(node, path: str, allowed, required=()) -> dict:
    _expect(node, dict, path)
    for key in node:
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
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, int | float | bool) else ""
        raise _Invalid(path, f"expected a string, got {_kind(value)}{hint}")
    return value


def _expect(value, kind: type, path: str):
    if not isinstance(value, kind):
        raise _Invalid(path, f"expected {_KINDS[kind]}, got {_kind(value)}")
    return value


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
