"""Policy engine: Cilium-format rules -> per-endpoint policy map keys. Pure Python, no kernel."""

from .compute import (
    EGRESS,
    INGRESS,
    EndpointPolicy,
    KeySet,
    Peers,
    PolicyKey,
    compact,
    first_match,
    lookup_keys,
)
from .model import (
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
    "INGRESS",
    "MAX_RANGE",
    "NETWORK_LABEL",
    "EndpointPolicy",
    "Identity",
    "KeySet",
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
    "parse_rules",
]
