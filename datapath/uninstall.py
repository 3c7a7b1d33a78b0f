"""Everything a datapath leaves on the host after its driver stopped, and its removal.

A stopped driver leaves its work in place on purpose (containers keep their connectivity
and policy): veths with their tc programs, the pinned maps, unreachable routes over its
ranges, its FORWARD and masquerade rules and port-publishing chain, its XDP prefilter on
host devices, its VXLAN device (with the routes to other nodes over it), its direct server
return program on the underlay devices.
`remove_from_host` takes all of that away for one instance, told apart from other instances
and from the host's own by what only that instance uses: its veth prefix, its pin directory
(whose prefilter map its XDP programs use, whose tunnel map names its VXLAN device), and
routes of our protocol inside its ranges. It must only run once the driver is stopped for good.
"""

import ctypes as ct
import shutil
from pathlib import Path

from . import bpffs, loader, netlink, xdp
from .maps.pinned import PinnedMap
from .maps.specs import map_specs
from .netfilter import firewall, portmap


def remove_from_host(pin_dir: str, veth_prefix: str, ranges: list[str]) -> list[str]:
    """Remove the instance's links, routes, netfilter rules and pinned maps; one line for
    each thing removed. Idempotent: a second call removes nothing."""
    # Links first: the endpoint routes and tc programs go with them.
    links = list(netlink.links_with_prefix(veth_prefix))
    for name in links:
        netlink.delete_link(name)
    removed = [f"link {name}" for name in links]
    removed += [f"route {dst}" for dst in netlink.remove_own_routes(ranges)]
    removed += firewall.remove_forwarding(veth_prefix)
    removed += firewall.remove_masquerade(veth_prefix)
    removed += portmap.teardown(veth_prefix)
    removed += [f"XDP prefilter on {device}" for device in detach_prefilter(Path(pin_dir))]
    removed += [f"from_netdev on {device}" for device in detach_from_netdev(Path(pin_dir))]
    removed += [f"link {name}" for name in remove_tunnel(Path(pin_dir))]
    if remove_pin_dir(Path(pin_dir)):
        removed.append(f"pinned maps {pin_dir}")
    return removed


def remove_pin_dir(pin_dir: Path) -> bool:
    """Remove pin_dir and what is pinned in it, only if it lies on a BPF filesystem (a
    misconfigured path never costs a real directory). False if there was none."""
    if not pin_dir.is_dir() or not bpffs.on_bpffs(pin_dir):
        return False
    shutil.rmtree(pin_dir)
    return True


def detach_prefilter(pin_dir: Path) -> list[str]:
    """Detach the XDP programs that use the instance's pinned prefilter map (before the
    pins go: the map's id is how they are told from others'); the devices they left."""
    spec = next(spec for spec in map_specs() if spec.name == "prefilter4")
    if not (pin_dir / spec.name).exists() or not bpffs.on_bpffs(pin_dir):
        return []
    pinned = PinnedMap.open(pin_dir, spec)
    try:
        return xdp.detach_ours(pinned.map_id())
    finally:
        pinned.close()


def detach_from_netdev(pin_dir: Path) -> list[str]:
    """Detach the tc programs that use the instance's pinned nodeport4 map (from_netdev, on
    the underlay devices), told from others' by that map's id; the devices they left."""
    spec = next(spec for spec in map_specs() if spec.name == "nodeport4")
    if not (pin_dir / spec.name).exists() or not bpffs.on_bpffs(pin_dir):
        return []
    pinned = PinnedMap.open(pin_dir, spec)
    try:
        ours = pinned.map_id()
    finally:
        pinned.close()
    left = []
    for name, ifindex in netlink.links_with_prefix("").items():
        if any(ours in xdp.program_map_ids(i) for i in loader.ingress_program_ids(name)):
            loader.detach_ingress(ifindex)
            left.append(name)
    return left


def remove_tunnel(pin_dir: Path) -> list[str]:
    """Delete the VXLAN device the instance's pinned tunnel map names (before the pins go:
    the ifindex there is how its device is told from another instance's), with the routes
    to other nodes over it; its name, if there was one."""
    spec = next(spec for spec in map_specs() if spec.name == "tunnel")
    if not (pin_dir / spec.name).exists() or not bpffs.on_bpffs(pin_dir):
        return []
    pinned = PinnedMap.open(pin_dir, spec)
    try:
        leaf = pinned.lookup(ct.c_uint32(0))
    finally:
        pinned.close()
    name = netlink.link_name(leaf.value) if leaf is not None and leaf.value else None
    if name is None or not netlink.delete_link(name):
        return []
    return [name]
