"""Docker networks of this driver: their pools, gateways and options."""

import ipaddress

from datapath import Outbound
from datapath.interface import DatapathApi
from driver import failpoints
from driver.errors import InvalidArgument

from .addressing import block_router
from .ipam import GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, Ipam, unreachable_routes
from .state import Network, Store

GENERIC_OPTIONS = "com.docker.network.generic"
INTERNAL_OPTION = "com.docker.network.internal"  # `docker network create --internal`
MTU_OPTIONS = ("com.docker.network.driver.mtu", "mtu")
MASQUERADE_OPTION = "masquerade"  # `-o masquerade=false`: the network routes the node ranges
IPV4_OPTION = "ipv4"  # `-o ipv4=false`: IPv6-only, IPv4 destinations through NAT64
ENABLE_IPV4_OPTION = "com.docker.network.enable_ipv4"  # Docker 28's `--ipv4=false`
DRIVER_OPTIONS = (*MTU_OPTIONS, MASQUERADE_OPTION, IPV4_OPTION)
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
ANY_ROUTES = {"0.0.0.0/0", "::/0"}


class Networks:
    def __init__(
        self,
        store: Store,
        ipam: Ipam,
        datapath: DatapathApi,
        default_mtu: int,
    ):
        self.store = store
        self.ipam = ipam
        self.datapath = datapath
        self.default_mtu = default_mtu

    def create(self, network_id: str, options: dict, ipv4_data: list, ipv6_data: list) -> None:
        if self.store.get_network(network_id) is not None:
            return
        generic = options.get(GENERIC_OPTIONS) or {}
        mtu = self._mtu(generic)
        outbound = _outbound(options, generic)
        pool4, gateway4 = _first_pool(ipv4_data)
        pool6, gateway6 = _first_pool(ipv6_data)
        owned = [d["Pool"] for d in ipv4_data + ipv6_data if _needs_own_route(d)]
        for cidr in owned:
            self.ipam.check_free_range(_parse(ipaddress.ip_network, cidr, "pool"))
        with unreachable_routes(self.datapath, owned), self.store.transaction():
            if not ipv6_data:
                # Docker's own IPAM gave no IPv6: the driver's, from a block of the node range.
                block = self.ipam.carve(6)
                pool6, gateway6 = str(block), str(block_router(block))
            if outbound is Outbound.NAT64 and not ipv4_data:
                # Docker 28's --ipv4=false asks for no IPv4 pool: the endpoints' NAT64 side
                # comes from a block of the node range, with no gateway.
                pool4, gateway4 = str(self.ipam.carve(4)), None
            net = Network(
                network_id=network_id,
                pool4=pool4,
                gateway4=gateway4,
                pool6=pool6,
                gateway6=gateway6,
                ipv6_by_driver=not ipv6_data,
                mtu=mtu,
                owned_routes=tuple(owned),
                outbound=outbound.value,
            )
            self.store.add_network(net)
            failpoints.hit("create_network.before_commit")

    def delete(self, network_id: str, delete_endpoint) -> None:
        net = self.store.get_network(network_id)
        if net is None:
            return
        for ep in self.store.endpoints(network_id):
            delete_endpoint(ep.endpoint_id)
        with self.store.transaction():
            self.store.delete_network(network_id)
        # Only once the network is gone for good: a failed commit keeps network and routes.
        for cidr in net.owned_routes:
            self.datapath.remove_unreachable_route(cidr)

    def _mtu(self, generic: dict) -> int:
        unknown = sorted(set(generic) - set(DRIVER_OPTIONS))
        if unknown:
            raise InvalidArgument(
                f"unknown driver option {', '.join(unknown)} (known: {', '.join(DRIVER_OPTIONS)})"
            )
        raw = next((generic[k] for k in MTU_OPTIONS if k in generic), self.default_mtu)
        try:
            mtu = int(raw)
        except (TypeError, ValueError):
            raise InvalidArgument(f"MTU {raw!r} is not a number") from None
        if not 1280 <= mtu <= 65535:
            raise InvalidArgument(f"MTU {mtu} must be between 1280 and 65535")
        return mtu


def _outbound(options: dict, generic: dict) -> Outbound:
    """Internal networks keep everything on the host, whatever the masquerade option says (the
    stricter wins); the others masquerade unless told not to. An IPv6-only network (`-o
    ipv4=false`, or Docker 28's `--ipv4=false`) reaches IPv4 through NAT64, whose IPv4 side
    is masqueraded: it can be neither internal nor routed. A bad option is refused either way."""
    masquerade = _boolean(generic, MASQUERADE_OPTION)
    ipv4 = _boolean(generic, IPV4_OPTION)
    if str(options.get(ENABLE_IPV4_OPTION, "true")).lower() == "false":
        ipv4 = False
    internal = options.get(INTERNAL_OPTION) is True
    if not ipv4:
        if internal or not masquerade:
            raise InvalidArgument(
                "an IPv6-only network (ipv4=false) reaches IPv4 through NAT64 with the host's "
                "address: it cannot be --internal or masquerade=false"
            )
        return Outbound.NAT64
    if internal:
        return Outbound.INTERNAL
    return Outbound.MASQUERADE if masquerade else Outbound.ROUTED


def _boolean(generic: dict, option: str) -> bool:
    raw = generic.get(option, "true")
    value = BOOLEANS.get(str(raw).lower())
    if value is None:
        raise InvalidArgument(f"driver option {option}={raw!r} is not true or false")
    return value


def _first_pool(data: list) -> tuple[str | None, str | None]:
    if not data:
        return None, None
    gateway = data[0].get("Gateway") or None
    if gateway:
        gateway = str(_parse(ipaddress.ip_interface, gateway, "gateway").ip)
    return data[0]["Pool"], gateway


def _parse(parse, text: str, what: str):
    try:
        return parse(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {text!r} does not parse: {exc}") from None


def _needs_own_route(data: dict) -> bool:
    """Pools from Docker's own IPAM get an unreachable route from the driver; ours have one."""
    ours = data.get("AddressSpace") in (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE)
    return not ours and data["Pool"] not in ANY_ROUTES
