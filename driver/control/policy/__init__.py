"""Policy engine: Cilium-format rules -> per-endpoint policy map keys. Pure Python, no kernel."""

from .compute import (
    EGRESS,
    INGRESS,
    MODES,
    EndpointPolicy,
    Peers,
    PolicyKey,
    compact,
    first_match,
    lookup_keys,
    merge,
)
from .model import (
    ID_ANY,
    ID_HOST,
    ID_INIT,
    ID_UNMANAGED,
    ID_WORLD,
    MIN_ENDPOINT_ID,
    NETWORK_LABEL,
    Identity,
    PolicyError,
    PolicyNotFound,
    Rule,
    Selector,
)
from .parse import MAX_RANGE, parse_rules
from .repository import PolicyRepository
from .trace import Verdict

__all__ = [
    "EGRESS",
    "ID_ANY",
    "ID_HOST",
    "ID_INIT",
    "ID_UNMANAGED",
    "ID_WORLD",
    "INGRESS",
    "MAX_RANGE",
    "MIN_ENDPOINT_ID",
    "MODES",
    "NETWORK_LABEL",
    "EndpointPolicy",
    "Identity",
    "Peers",
    "PolicyError",
    "PolicyKey",
    "PolicyNotFound",
    "PolicyRepository",
    "Rule",
    "Selector",
    "Verdict",
    "compact",
    "first_match",
    "lookup_keys",
    "merge",
    "parse_rules",
]
