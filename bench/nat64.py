"""The nat64 scenario of bench/run.py: one TCP stream to the world's IPv4 address, from an
endpoint of an IPv6-only network through 64:ff9b:: (translated in BPF, then masqueraded)
against the same stream from an ordinary endpoint over plain IPv4 (masqueraded).

Both endpoints are made here with a datapath of their own (pin dir, veth prefix "pcn" and
netfilter rules of that prefix; the driver is not involved), in namespaces pcb-nat64-*, on
the last-but-two subnets of the raw ranges; all of it is removed on exit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil

from common import container_netns, docker_addresses, quiet

from datapath import Datapath, EndpointSpec, Outbound
from datapath.loader import DEFAULT_NAT64_PREFIX
from datapath.netfilter import firewall, portmap

PIN_DIR = "/sys/fs/bpf/pcb-nat64"
VETH_PREFIX = "pcn"
VARIANTS = {"plain4": Outbound.MASQUERADE, "nat64": Outbound.NAT64}


def nat64_address(addr4: str) -> str:
    prefix = ipaddress.IPv6Network(DEFAULT_NAT64_PREFIX)
    return str(prefix.network_address + int(ipaddress.IPv4Address(addr4)))


def setup(stack: contextlib.ExitStack, range6, range4, world4: str, port: int, run) -> dict:
    """Both endpoints, each in a namespace with an iperf3 client's view of the world: the
    clients entry per variant (its "v4" is the address it dials for the world's IPv4)."""
    dp = Datapath(pin_dir=PIN_DIR, veth_prefix=VETH_PREFIX)
    net6 = list(range6.subnets(new_prefix=64))[-3]
    net4 = list(range4.subnets(new_prefix=24))[-3]
    dp.start()
    stack.callback(shutil.rmtree, PIN_DIR, ignore_errors=True)
    stack.callback(portmap.teardown, VETH_PREFIX)
    stack.callback(firewall.remove_masquerade, VETH_PREFIX)
    stack.callback(firewall.remove_forwarding, VETH_PREFIX)
    stack.callback(dp.close)
    for net in (net6, net4):
        dp.add_unreachable_route(str(net))
        stack.callback(dp.remove_unreachable_route, str(net))
    clients = {}
    for n, (variant, outbound) in enumerate(VARIANTS.items(), start=2):
        spec = EndpointSpec(
            endpoint_id=0xFF00 + n,
            host_ifname=f"{VETH_PREFIX}bench{n}",
            peer_ifname=f"pcnpeer{n}",
            mac=f"02:bc:00:00:00:{n:02x}",
            ipv6=net6[n],
            ipv4=net4[n],
            router6=net6[1],
            router4=net4[1],
            identity=0xFF00 + n,
            outbound=outbound,
        )
        ns = f"pcb-nat64-{variant}"
        quiet("ip", "netns", "del", ns)
        dp.create_endpoint(spec)
        stack.callback(dp.delete_endpoint, spec)
        stack.callback(quiet, "ip", "netns", "del", ns)
        container_netns(run, ns, spec.peer_ifname)
        docker_addresses(
            run,
            ns,
            spec.ipv6,
            spec.ipv4,
            spec.router6,
            spec.router4,
            routes4=outbound is not Outbound.NAT64,
        )
        dial = nat64_address(world4) if outbound is Outbound.NAT64 else world4
        clients[variant] = {"ns": ["ip", "netns", "exec", ns], "v4": dial, "port": port}
    return clients
