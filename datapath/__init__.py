"""pycilium datapath: veths, routes, pinned BPF maps and the tc program on each endpoint."""

from .datapath import DEFAULT_PIN_DIR, Datapath
from .errors import DatapathError, VethExistsError
from .maps import AddressEntry, EndpointEntry
from .spec import EndpointSpec

__all__ = [
    "DEFAULT_PIN_DIR",
    "AddressEntry",
    "Datapath",
    "DatapathError",
    "EndpointEntry",
    "EndpointSpec",
    "VethExistsError",
]
