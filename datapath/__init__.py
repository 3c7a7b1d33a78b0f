"""pycilium datapath: veths, routes, pinned BPF maps and the tc programs on each endpoint."""

from .abi import EGRESS, HOST_ID, INGRESS, INIT_ID, UNMANAGED_ID, WORLD_ID, PolicyKey
from .datapath import DEFAULT_PIN_DIR, Datapath
from .errors import DatapathError, VethExistsError
from .events import Event
from .maps import AddressEntry, CtEntry, EndpointEntry, MapSizes
from .maps.flows import FlowCount
from .netfilter.portmap import PortMapping
from .service import Backend, Frontend
from .spec import EndpointSpec, Outbound

__all__ = [
    "DEFAULT_PIN_DIR",
    "EGRESS",
    "HOST_ID",
    "INGRESS",
    "INIT_ID",
    "UNMANAGED_ID",
    "WORLD_ID",
    "AddressEntry",
    "Backend",
    "CtEntry",
    "Datapath",
    "DatapathError",
    "EndpointEntry",
    "EndpointSpec",
    "Event",
    "FlowCount",
    "Frontend",
    "MapSizes",
    "Outbound",
    "PolicyKey",
    "PortMapping",
    "VethExistsError",
]
