"""Links, routes and sysctls through pyroute2.

Every function opens its own short-lived socket (``with IPRoute() as ipr``), so nothing
exists at import time and callers on different threads share nothing. Idempotence comes
from catching only the specific errno: EEXIST on add, ENOENT/ENODEV/ESRCH on delete.
"""

import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_NOARP, IFF_UP

from .errors import DatapathError, VethExistsError

# rtm_protocol of every route this package installs, so we can tell ours from others.
ROUTE_PROTOCOL = 0xCE
RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH)
DUMP_ATTEMPTS = 40
# Pauses between attempts grow to this: a burst of veth changes (a compose project starting)
# interrupted ten dumps in a row, and the driver failed to start.
DUMP_PAUSE_MAX = 0.1


def _dump(request, *args, **kwargs) -> list:
    """A netlink dump, again if the kernel says links or routes changed while it ran
    (NLM_F_DUMP_INTR): busy hosts create and delete veths all the time."""
    for attempt in range(DUMP_ATTEMPTS):
        try:
            return list(request(*args, **kwargs))
        except NetlinkDumpInterrupted:
            time.sleep(min(0.001 * 2**attempt, DUMP_PAUSE_MAX))
    raise DatapathError("netlink dump kept being interrupted by changes")


def network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """cidr parsed (host bits allowed); DatapathError if it is none."""
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise DatapathError(f"invalid network {cidr!r}: {exc}") from exc


def _family(net) -> int:
    return socket.AF_INET6 if net.version == 6 else socket.AF_INET


# sysctls


def set_sysctl(key: str, value: str) -> None:
    """Set a sysctl given in dotted form, e.g. ``net.ipv4.ip_forward``."""
    path = Path("/proc/sys") / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError as exc:
        raise DatapathError(f"cannot set sysctl {key}={value}: {exc.strerror}") from exc


def enable_forwarding() -> None:
    set_sysctl("net.ipv6.conf.all.forwarding", "1")
    set_sysctl("net.ipv4.ip_forward", "1")


# links


def link_index(ifname: str) -> int | None:
    # The libc call (one ioctl) rather than a netlink dump through pyroute2: a policy change
    # looks up every endpoint's veth, and this takes 2 us where pyroute2 takes 300.
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def link_name(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def link_mac(ifindex: int) -> str:
    with IPRoute() as ipr:
        (link,) = _dump(ipr.get_links, ifindex)
    return link.get_attr("IFLA_ADDRESS")


def dump_links() -> list:
    """The link messages of every link of the host's namespace."""
    with IPRoute() as ipr:
        return _dump(ipr.get_links)


def links_with_prefix(prefix: str) -> dict[str, int]:
    """Names and ifindexes of the host's links whose name starts with prefix."""
    links = dump_links()
    names = ((link.get_attr("IFLA_IFNAME"), link["index"]) for link in links)
    return {name: index for name, index in names if name.startswith(prefix)}


def create_veth(host_ifname: str, peer_ifname: str, peer_mac: str, mtu: int) -> int:
    """Create a veth pair; returns the host side's ifindex. Raises VethExistsError."""
    peer = {"ifname": peer_ifname, "address": peer_mac, "mtu": mtu}
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu, peer=peer)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                if ipr.link_lookup(ifname=host_ifname):
                    raise VethExistsError(f"interface {host_ifname} already exists") from exc
                raise DatapathError(f"interface {peer_ifname} already exists") from exc
            raise DatapathError(
                f"cannot create veth pair {host_ifname}/{peer_ifname}: {exc}"
            ) from exc
        return ipr.link_lookup(ifname=host_ifname)[0]


def configure_host_veth(ifname: str, ifindex: int) -> None:
    """Route through the host side: no reverse-path filter, forwarding on, link up.

    DAD is off so the link-local address the host solicits the container from is usable
    at once (otherwise host -> container traffic waits a second or more).
    """
    set_sysctl(f"net.ipv6.conf.{ifname}.accept_dad", "0")
    set_sysctl(f"net.ipv4.conf.{ifname}.rp_filter", "0")
    set_sysctl(f"net.ipv4.conf.{ifname}.forwarding", "1")
    set_sysctl(f"net.ipv6.conf.{ifname}.forwarding", "1")
    with IPRoute() as ipr:
        ipr.link("set", index=ifindex, state="up")


def replace_permanent_neighbour(ip: str, mac: str, ifindex: int) -> None:
    """The neighbour entry of ip on ifindex, fixed to mac (it goes with the link)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with IPRoute() as ipr:
        try:
            ipr.neigh(
                "replace", dst=ip, lladdr=mac, ifindex=ifindex, family=family, state="permanent"
            )
        except NetlinkError as exc:
            raise DatapathError(f"cannot set neighbour {ip} on ifindex {ifindex}: {exc}") from exc


def delete_link(ifname: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise DatapathError(f"cannot delete interface {ifname}: {exc}") from exc
    return True


# the VXLAN device between nodes

VXLAN_PORT = 8472  # Linux's (and Cilium's) VXLAN port; IANA's 4789 is often taken by others
VXLAN_OVERHEAD = 50  # outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8


def _vxlan_settings(link) -> tuple | None:
    """(local address, port, external mode) of a VXLAN device; None for any other link."""
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    return (
        data.get_attr("IFLA_VXLAN_LOCAL"),
        data.get_attr("IFLA_VXLAN_PORT"),
        bool(data.get_attr("IFLA_VXLAN_COLLECT_METADATA")),
    )


def ensure_vxlan(ifname: str, local: str, mtu: int) -> int:
    """Make ifname a VXLAN device in external mode (collect_md: the BPF programs set each
    packet's VNI and remote) on VXLAN_PORT from local, without ARP or address learning, with
    mtu, up; its ifindex. A link of that name made otherwise (another local address, or no
    VXLAN device) is remade."""
    wanted = (local, VXLAN_PORT, True)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found and _vxlan_settings(_dump(ipr.get_links, found[0])[0]) != wanted:
            ipr.link("del", index=found[0])
            found = []
        if not found:
            try:
                ipr.link(
                    "add",
                    ifname=ifname,
                    kind="vxlan",
                    vxlan_collect_metadata=1,
                    vxlan_port=VXLAN_PORT,
                    vxlan_local=local,
                    vxlan_learning=0,
                    mtu=mtu,
                )
            except NetlinkError as exc:
                raise DatapathError(f"cannot create VXLAN device {ifname}: {exc}") from exc
        (ifindex,) = ipr.link_lookup(ifname=ifname)
        # No link-local address, so the host sends nothing of its own (MLD, router
        # solicitations) into the tunnel; routes over it need no address.
        set_sysctl(f"net.ipv6.conf.{ifname}.addr_gen_mode", "1")
        set_sysctl(f"net.ipv4.conf.{ifname}.rp_filter", "0")
        up_noarp = IFF_UP | IFF_NOARP
        ipr.link("set", index=ifindex, mtu=mtu, flags=up_noarp, change=up_noarp)
    return ifindex


# routes


def _route_args(cidr: str) -> dict:
    net = network(cidr)
    return {
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "family": _family(net),
        "proto": ROUTE_PROTOCOL,
    }


def replace_device_route(cidr: str, ifindex: int) -> None:
    """Route cidr out of ifindex (e.g. an endpoint's /128 via its host veth)."""
    args = _route_args(cidr)
    if args["family"] == socket.AF_INET:
        args["scope"] = RT_SCOPE_LINK
    with IPRoute() as ipr:
        try:
            ipr.route("replace", oif=ifindex, **args)
        except NetlinkError as exc:
            raise DatapathError(f"cannot add route {cidr} via ifindex {ifindex}: {exc}") from exc


def delete_device_route(cidr: str, ifindex: int) -> bool:
    """Delete the route replace_device_route made (its scope too: an IPv4 delete matches
    the scope); False if there was none."""
    scope = {"scope": RT_SCOPE_LINK} if network(cidr).version == 4 else {}
    return delete_route(cidr, oif=ifindex, **scope)


def replace_gateway_route(cidr: str, gateway: str, ifindex: int) -> None:
    """Route cidr through gateway, a neighbour on ifindex (e.g. a VIP to an endpoint)."""
    with IPRoute() as ipr:
        try:
            ipr.route("replace", oif=ifindex, gateway=gateway, **_route_args(cidr))
        except NetlinkError as exc:
            raise DatapathError(f"cannot add route {cidr} via {gateway}: {exc}") from exc


def delete_route(cidr: str, **match) -> bool:
    """Delete one of our routes to cidr; False if there was none."""
    with IPRoute() as ipr:
        try:
            ipr.route("del", **_route_args(cidr), **match)
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise DatapathError(f"cannot delete route {cidr}: {exc}") from exc
    return True


def add_unreachable_route(cidr: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("add", type="unreachable", **_route_args(cidr))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DatapathError(f"cannot add unreachable route {cidr}: {exc}") from exc


def remove_unreachable_route(cidr: str) -> None:
    delete_route(cidr, type="unreachable")


def remove_own_routes(ranges: list[str]) -> list[str]:
    """Delete the main-table routes of our protocol whose destination lies inside one of
    ranges; their destinations. Routes of other protocols or elsewhere stay."""
    owned = [network(cidr) for cidr in ranges]
    removed = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in main_routes(family):
            if route.proto != ROUTE_PROTOCOL:
                continue
            dst = network(route.dst)
            inside = any(dst.version == o.version and dst.subnet_of(o) for o in owned)
            if inside and delete_route(route.dst, type=route.type):
                removed.append(route.dst)
    return removed


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR
    proto: int
    type: int
    ifname: str | None


def _route_dst(route, family: int) -> str:
    dst = route.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return f"{dst}/{route['dst_len']}"


def _main_routes(ipr: IPRoute, family: int) -> list[Route]:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in _dump(ipr.get_links)}
    return [
        Route(
            dst=_route_dst(r, family),
            proto=r["proto"],
            type=r["type"],
            ifname=names.get(r.get_attr("RTA_OIF")),
        )
        for r in _dump(ipr.get_routes, family=family, table=RT_TABLE_MAIN)
    ]


def main_routes(family: int) -> list[Route]:
    """Routes of the host's main table for one address family."""
    with IPRoute() as ipr:
        return _main_routes(ipr, family)
