"""BPF run time of the two tc programs per operation, without Docker or a running driver.

A Datapath of this checkout on its own pin dir, veth prefix and ranges; a client and two
backends as network namespaces (set up as Docker would); a VIP with the two as backends.
tcpbench crr and rr from the client, directly (crr: to the two backends in turn) and
through the VIP, IPv6 then IPv4. The kernel's run-time statistics (kernel.bpf_stats_enabled,
on only meanwhile) of the programs on those three veths alone, so other BPF users of the
machine do not count; the machine's load still does, so compare builds by alternating
runs. Prints one line per measurement and appends them to --out. As root, from the
checkout:   .venv/bin/python bench/bpf-cost.py [--seconds 2] [--out FILE]
"""

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from datapath import Backend, Datapath, EndpointSpec, Frontend
from datapath.netfilter import firewall, portmap

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "pcc"  # host veths; neither the driver's "lxc" nor the tests' "dpt"
NET6 = ipaddress.IPv6Network("fdce:1c9b::/64")
NET4 = ipaddress.IPv4Network("10.194.0.0/16")
VIP6, VIP4 = ipaddress.IPv6Address("fdce:1c9c::10"), ipaddress.IPv4Address("10.193.0.10")
SERVICE_RANGES = ("fdce:1c9c::/64", "10.193.0.0/24")
PORT, VIP_PORT, TCP = 5001, 80, 6


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def make_endpoint(datapath: Datapath, n: int) -> tuple[str, EndpointSpec]:
    """Endpoint n with its peer in a new netns, addressed and routed as Docker does."""
    tag = f"{os.getpid() & 0xFFFF:04x}{n:04x}"
    spec = EndpointSpec(
        endpoint_id=n,
        host_ifname=f"{PREFIX}{tag}",
        peer_ifname=f"pcp{tag}",
        mac=f"02:dc:01:00:00:{n:02x}",
        ipv6=NET6[n],
        ipv4=NET4[n],
        router6=NET6[1],
        router4=NET4[1],
        identity=1000 + n,
    )
    datapath.create_endpoint(spec)
    ns = f"pcc-{os.getpid()}-{n}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "set", spec.peer_ifname, "netns", ns)
    ip = ("ip", "-n", ns)
    sh(*ip, "link", "set", spec.peer_ifname, "name", "eth0")
    sh(*ip, "link", "set", "lo", "up")
    sh(*ip, "link", "set", "eth0", "up")
    sh(*ip, "-6", "addr", "add", f"{spec.ipv6}/128", "dev", "eth0", "nodad")
    sh(*ip, "addr", "add", f"{spec.ipv4}/32", "dev", "eth0")
    sh(*ip, "-6", "route", "add", str(spec.router6), "dev", "eth0")
    sh(*ip, "-6", "route", "add", "default", "via", str(spec.router6), "dev", "eth0")
    sh(*ip, "route", "add", f"{spec.router4}/32", "dev", "eth0")
    sh(*ip, "route", "add", "default", "via", str(spec.router4), "dev", "eth0")
    return ns, spec


def program_ids(specs: list[EndpointSpec]) -> set[int]:
    ids = set()
    for spec in specs:
        for entry in json.loads(sh("bpftool", "net", "show", "dev", spec.host_ifname, "-j")):
            ids.update(hook["id"] for hook in entry.get("tc", []))
    return ids


def run_times(ids: set[int]) -> dict[str, tuple[int, int]]:
    """Program name -> (run_time_ns, run_cnt), summed over the programs in ids."""
    totals: dict[str, tuple[int, int]] = {}
    for prog in json.loads(sh("bpftool", "prog", "show", "-j")):
        if prog["id"] in ids:
            t, c = totals.get(prog["name"], (0, 0))
            totals[prog["name"]] = (t + prog.get("run_time_ns", 0), c + prog.get("run_cnt", 0))
    return totals


def measure(
    tcpbench: Path, client_ns: str, ids: set[int], mode: str, addr: str, port: int, seconds: str
) -> str:
    before = run_times(ids)
    cmd = ("ip", "netns", "exec", client_ns, str(tcpbench), mode, addr, str(port), seconds)
    out = sh(*cmd).split()
    after = run_times(ids)
    ops = int(out[0])
    parts = []
    for name in sorted(after):
        t, c = (after[name][i] - before.get(name, (0, 0))[i] for i in (0, 1))
        parts.append(f"{name} {t / ops:.0f} ns/op {t / max(c, 1):.0f} ns/run")
    return f"{mode} {float(out[2]):.0f}/s; " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="2", help="per tcpbench run")
    parser.add_argument("--out", type=Path, help="append the result lines here too")
    args = parser.parse_args()
    build = ROOT / "build" / "bench"
    build.mkdir(parents=True, exist_ok=True)
    tcpbench = build / "tcpbench"
    sh("gcc", "-O2", "-Wall", "-Werror", "-o", str(tcpbench), str(ROOT / "bench/tcpbench.c"))

    pin_dir = f"/sys/fs/bpf/pycilium-bpfcost-{os.getpid()}"
    datapath = Datapath(pin_dir=pin_dir, veth_prefix=PREFIX, service_ranges=SERVICE_RANGES)
    routes = [str(NET6), str(NET4), *SERVICE_RANGES]
    made: list[tuple[str, EndpointSpec]] = []
    servers: list[subprocess.Popen] = []
    lines = []
    try:
        datapath.start()
        for net in routes:
            datapath.add_unreachable_route(net)
        made = [make_endpoint(datapath, n) for n in (16, 17, 18)]
        (client_ns, _), backends = made[0], made[1:]
        for ns, _ in backends:
            cmd = ("ip", "netns", "exec", ns, str(tcpbench), "server", str(PORT))
            servers.append(subprocess.Popen(cmd))
        time.sleep(0.5)
        ids = program_ids([spec for _, spec in made])
        sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
        for version, vip in ((6, VIP6), (4, VIP4)):
            addrs = [spec.ipv6 if version == 6 else spec.ipv4 for _, spec in backends]
            datapath.set_service(
                version, Frontend(vip, VIP_PORT, TCP), [Backend(a, PORT) for a in addrs]
            )
            direct = ",".join(map(str, addrs))
            for name, addr, port in (("vip", str(vip), VIP_PORT), ("direct", direct, PORT)):
                for mode in ("crr", "rr"):
                    result = measure(tcpbench, client_ns, ids, mode, addr, port, args.seconds)
                    lines.append(f"IPv{version} {name} {result}")
                    print(lines[-1], flush=True)
    finally:
        sh("sysctl", "-qw", "kernel.bpf_stats_enabled=0")
        for server in servers:
            server.kill()
            server.wait()
        for ns, spec in made:
            datapath.delete_endpoint(spec)
            subprocess.run(("ip", "netns", "del", ns), check=False)
        for net in routes:
            datapath.remove_unreachable_route(net)
        datapath.close()
        firewall.remove_forwarding(PREFIX)
        firewall.remove_masquerade(PREFIX)
        portmap.teardown(PREFIX)
        shutil.rmtree(pin_dir, ignore_errors=True)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
