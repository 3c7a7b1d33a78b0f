"""Security identities and policy keys: the vocabulary the control plane speaks to the datapath."""

from typing import NamedTuple

from .errors import DatapathError

# Reserved identities (lib/common.h IDENTITY_*); endpoint identities are >= 256.
ANY_ID = 0  # only as a wildcard in policy keys
HOST_ID = 1
WORLD_ID = 2
INIT_ID = 3  # not known yet: the endpoint sends and receives nothing but NDisc/ARP
UNMANAGED_ID = 4
MAX_IDENTITY = 2**32 - 1

# Direction relative to the endpoint (lib/common.h DIR_*).
INGRESS = 0  # traffic to the endpoint
EGRESS = 1  # traffic from it

PROTOCOLS = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


class PolicyKey(NamedTuple):
    """One allow entry of an endpoint's policy; 0 in a field is a wildcard. A tuple, so that
    the set arithmetic of a policy change over thousands of keys hashes and compares in C."""

    identity: int  # peer identity
    dport: int  # host byte order
    protocol: int  # IANA number
    direction: int  # INGRESS or EGRESS

    def validate(self) -> None:
        if not 0 <= self.identity <= MAX_IDENTITY:
            raise DatapathError(f"policy key {self}: identity out of range")
        if not 0 <= self.dport <= 0xFFFF:
            raise DatapathError(f"policy key {self}: port out of range")
        if not 0 <= self.protocol <= 0xFF:
            raise DatapathError(f"policy key {self}: protocol out of range")
        if self.direction not in (INGRESS, EGRESS):
            raise DatapathError(f"policy key {self}: direction must be INGRESS or EGRESS")
        if self.dport and self.protocol not in (6, 17):
            raise DatapathError(f"policy key {self}: a port needs protocol tcp (6) or udp (17)")


def validate_identity(identity: int) -> None:
    if not isinstance(identity, int) or not 0 < identity <= MAX_IDENTITY:
        raise DatapathError(f"invalid security identity {identity!r}")
