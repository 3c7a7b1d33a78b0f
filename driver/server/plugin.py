"""Docker's libnetwork remote NetworkDriver and IpamDriver protocol.

Every call is a POST with a JSON body and no Content-Type; replies are JSON. Failures are
rendered as {"Err": ...} by the app's error handler (400 for a body that does not decode or
does not have the call's shape, 500 otherwise). Each handler quotes the request it receives.
"""

import json
import logging

from flask import Blueprint, Response, current_app, request
from jsonschema import Draft7Validator

from driver import failpoints
from driver.control.ipam import GATEWAY_OPTION, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE
from driver.control.plane import ControlPlane
from driver.errors import BadRequest

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"

log = logging.getLogger(__name__)

bp = Blueprint("plugin", __name__)

_string = {"type": "string"}
_id = {"type": "string", "minLength": 1, "maxLength": 256}
# Docker's endpoint ids are 64 hex digits; the first 12 name the veth.
_endpoint_id = {"type": "string", "pattern": "^[0-9a-f]{12,64}$"}
_options = {"type": ["object", "null"]}
_ip_data = {
    "type": ["array", "null"],
    "items": {
        "type": "object",
        "required": ["Pool"],
        "properties": {
            "AddressSpace": _string,
            "Pool": _string,
            "Gateway": _string,
            "AuxAddresses": {"type": ["object", "null"]},
        },
    },
}


def _schema(required: dict, optional: dict | None = None) -> Draft7Validator:
    return Draft7Validator(
        {
            "type": "object",
            "required": sorted(required),
            "properties": {**required, **(optional or {})},
        }
    )


NETWORK = _schema({"NetworkID": _id})
ENDPOINT = _schema({"NetworkID": _id, "EndpointID": _endpoint_id})
CREATE_NETWORK = _schema(
    {"NetworkID": _id}, {"Options": _options, "IPv4Data": _ip_data, "IPv6Data": _ip_data}
)
CREATE_ENDPOINT = _schema(
    {"NetworkID": _id, "EndpointID": _endpoint_id},
    {
        "Interface": {
            "type": ["object", "null"],
            "properties": {"Address": _string, "AddressIPv6": _string, "MacAddress": _string},
        },
        "Options": _options,
    },
)
JOIN = _schema(
    {
        "NetworkID": _id,
        "EndpointID": _endpoint_id,
        "SandboxKey": {"type": "string", "pattern": "^/[^\\0]*$", "not": {"pattern": "\\.\\."}},
    },
    {"Options": _options},
)
REQUEST_POOL = _schema(
    {},
    {
        "AddressSpace": _string,
        "Pool": _string,
        "SubPool": _string,
        "Options": _options,
        "V6": {"type": "boolean"},
    },
)
POOL = _schema({"PoolID": _id})
REQUEST_ADDRESS = _schema({"PoolID": _id}, {"Address": _string, "Options": _options})
RELEASE_ADDRESS = _schema({"PoolID": _id, "Address": _string})


def reply(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype=CONTENT_TYPE)


def parse_body(validator: Draft7Validator | None) -> dict:
    """The request's JSON object, checked against the call's schema. Docker sends no
    Content-Type, so the raw body is decoded; a retried call may arrive empty."""
    raw = request.get_data(cache=True)
    log.debug("%s %s", request.path, raw[:4096])
    if validator is None:
        return {}
    if not raw.strip():
        raise BadRequest("empty request body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "body"
        raise BadRequest(f"{request.path.lstrip('/')}: {where}: {error.message}")
    return body


def call(name: str, validator: Draft7Validator | None = None):
    """Register a protocol handler taking the parsed body and returning the reply body."""

    def register(handler):
        def view():
            body = handler(parse_body(validator)) or {}
            failpoints.hit(name + ".before_reply")
            return reply(body)

        bp.add_url_rule("/" + name, name.replace(".", "_"), view, methods=["POST"])
        return handler

    return register


def plane() -> ControlPlane:
    return current_app.extensions["pycilium"]


@call("Plugin.Activate")
def activate(_):
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


@call("NetworkDriver.GetCapabilities")
def network_capabilities(_):
    return {"Scope": "local", "ConnectivityScope": "local"}


@call("NetworkDriver.CreateNetwork", CREATE_NETWORK)
def create_network(body):
    """{"NetworkID", "Options": {"com.docker.network.enable_ipv6": bool,
    "com.docker.network.generic": {...}}, "IPv4Data": [{"AddressSpace", "Pool", "Gateway",
    "AuxAddresses"}], "IPv6Data": [...]}"""
    plane().create_network(
        body["NetworkID"],
        body.get("Options") or {},
        body.get("IPv4Data") or [],
        body.get("IPv6Data") or [],
    )


@call("NetworkDriver.DeleteNetwork", NETWORK)
def delete_network(body):
    """{"NetworkID"}"""
    plane().delete_network(body["NetworkID"])


@call("NetworkDriver.CreateEndpoint", CREATE_ENDPOINT)
def create_endpoint(body):
    """{"NetworkID", "EndpointID", "Interface": {"Address", "AddressIPv6", "MacAddress"},
    "Options": {...}} -> {"Interface": only the fields Docker left empty}"""
    filled = plane().create_endpoint(
        body["NetworkID"], body["EndpointID"], body.get("Interface") or {}
    )
    return {"Interface": filled} if filled else {}


@call("NetworkDriver.EndpointOperInfo", ENDPOINT)
def endpoint_oper_info(body):
    """{"NetworkID", "EndpointID"} -> {"Value": {...}}"""
    ep = plane().endpoint_info(body["EndpointID"])
    if ep is None:
        return {"Value": {}}
    return {"Value": {"id": ep.numeric_id, "hostInterface": ep.host_ifname, "ipv6": ep.ipv6}}


@call("NetworkDriver.DeleteEndpoint", ENDPOINT)
def delete_endpoint(body):
    """{"NetworkID", "EndpointID"}; Docker has already pulled the interface out."""
    plane().delete_endpoint(body["EndpointID"])


@call("NetworkDriver.Join", JOIN)
def join(body):
    """{"NetworkID", "EndpointID", "SandboxKey": "/var/run/docker/netns/<id>", "Options"}"""
    return plane().join(
        body["NetworkID"], body["EndpointID"], body["SandboxKey"], body.get("Options") or {}
    )


@call("NetworkDriver.Leave", ENDPOINT)
def leave(body):
    """{"NetworkID", "EndpointID"}; arrives before Docker pulls the interface out."""
    plane().leave(body["NetworkID"], body["EndpointID"])


@call("NetworkDriver.ProgramExternalConnectivity", ENDPOINT)
def program_external_connectivity(_):
    """{"NetworkID", "EndpointID", "Options": {portmap, exposedports}}"""


@call("NetworkDriver.RevokeExternalConnectivity", ENDPOINT)
def revoke_external_connectivity(_):
    """{"NetworkID", "EndpointID"}"""


@call("NetworkDriver.DiscoverNew", _schema({}))
def discover_new(_):
    """{"DiscoveryType", "DiscoveryData"}: swarm only."""


@call("NetworkDriver.DiscoverDelete", _schema({}))
def discover_delete(_):
    """{"DiscoveryType", "DiscoveryData"}: swarm only."""


@call("NetworkDriver.AllocateNetwork", NETWORK)
def allocate_network(_):
    """{"NetworkID", "IPv4Data", "IPv6Data", "Options"}: swarm managers only."""
    return {"Options": {}}


@call("NetworkDriver.FreeNetwork", NETWORK)
def free_network(_):
    """{"NetworkID"}: swarm managers only."""


@call("IpamDriver.GetCapabilities")
def ipam_capabilities(_):
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


@call("IpamDriver.GetDefaultAddressSpaces")
def default_address_spaces(_):
    return {
        "LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
        "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE,
    }


@call("IpamDriver.RequestPool", REQUEST_POOL)
def request_pool(body):
    """{"AddressSpace", "Pool": "" | CIDR, "SubPool", "Options", "V6": bool}
    -> {"PoolID", "Pool", "Data": {"com.docker.network.gateway": "<router>/<len>"}}"""
    pool = plane().request_pool(body.get("Pool", ""), body.get("SubPool", ""), bool(body.get("V6")))
    data = {GATEWAY_OPTION: pool.gateway} if pool.gateway else {}
    return {"PoolID": pool.pool_id, "Pool": pool.cidr, "Data": data}


@call("IpamDriver.ReleasePool", POOL)
def release_pool(body):
    """{"PoolID"}"""
    plane().release_pool(body["PoolID"])


@call("IpamDriver.RequestAddress", REQUEST_ADDRESS)
def request_address(body):
    """{"PoolID", "Address": "" | IP, "Options": null | {"RequestAddressType": gateway}}
    -> {"Address": "IP/len", "Data": {}}"""
    address = plane().request_address(body["PoolID"], body.get("Address", ""), body.get("Options"))
    return {"Address": address, "Data": {}}


@call("IpamDriver.ReleaseAddress", RELEASE_ADDRESS)
def release_address(body):
    """{"PoolID", "Address"}"""
    plane().release_address(body["PoolID"], body.get("Address", ""))
