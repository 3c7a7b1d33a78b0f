"""Interleaved A/B of two revisions of the datapath: tcpbench rr and crr between two
endpoints of one node, no Docker and no driver.

Each revision's sources (`git archive`) get a Datapath of their own, on their own pin dir,
veth prefix and documentation addresses, with two endpoints in namespaces (b's ingress
policy admits a on the port), side by side. The runs alternate old/new, the order flipping
every round, so that what else the machine does falls on both. Per run: the rate, the CPU
time of the client and server processes per operation (their softirq work is mostly
theirs: the machine's other load does not stretch it as it does the rate) and, with
kernel.bpf_stats_enabled, the two programs' BPF run time per operation. Printed: medians,
and the median of the per-round new/old ratios. Run as root, with nothing else toggling
kernel.bpf_stats_enabled (bench/bpf-stats.sh; runs where it went off are left out). The
endpoints use 2001:db8:ab1::/64, 2001:db8:ab2::/64 and 198.51.100.0/24, the e2e suite's
world range: not beside that suite (nor beside anything else, for numbers worth reading).
Everything is named pab*/pap*/pycilium-ab-* and removed at the end:

    .venv/bin/python bench/datapath_ab.py OLD_REV [NEW_REV] [--rounds 12] [--seconds 1]
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PORT = 5201
# (tag, IPv6 range, IPv4 range) of the old and the new stand: documentation addresses.
STANDS = {
    "old": ("1", "2001:db8:ab1::/64", "198.51.100.0/25"),
    "new": ("2", "2001:db8:ab2::/64", "198.51.100.128/25"),
}
HZ = os.sysconf("SC_CLK_TCK")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=120)


def stand(root: str, tag: str, net6: str, net4: str) -> None:
    """Child: a Datapath from root's sources with endpoints a and b; prints them as a JSON
    line, removes everything when stdin closes."""
    import ipaddress

    sys.path.insert(0, root)
    from datapath import INGRESS, Datapath, EndpointSpec, PolicyKey
    from datapath.netfilter import firewall, portmap

    n6, n4 = ipaddress.IPv6Network(net6), ipaddress.IPv4Network(net4)
    prefix, pin_dir = f"pab{tag}", f"/sys/fs/bpf/pycilium-ab-{tag}"
    dp = Datapath(
        pin_dir=pin_dir, veth_prefix=prefix, service_ranges=("fdce:1c97::/64", "10.196.0.0/15")
    )
    made, out = [], {}
    try:
        dp.start()
        for n, name in ((2, "a"), (3, "b")):
            spec = EndpointSpec(
                endpoint_id=100 + n,
                host_ifname=f"{prefix}{name}",
                peer_ifname=f"pap{tag}{name}",
                mac=f"02:ab:00:00:0{tag}:0{n}",
                ipv6=n6[n],
                ipv4=n4[n],
                router6=n6[1],
                router4=n4[1],
                identity=2000 + n,
            )
            dp.create_endpoint(spec)
            ns = f"pycilium-ab-{tag}-{name}"
            made.append((spec, ns))
            run("ip", "netns", "add", ns)
            run("ip", "link", "set", spec.peer_ifname, "netns", ns)
            ip = ("ip", "-n", ns)
            run(*ip, "link", "set", spec.peer_ifname, "name", "eth0")
            run(*ip, "link", "set", "lo", "up")
            run(*ip, "link", "set", "eth0", "up")
            run(*ip, "-6", "addr", "add", f"{spec.ipv6}/128", "dev", "eth0", "nodad")
            run(*ip, "addr", "add", f"{spec.ipv4}/32", "dev", "eth0")
            run(*ip, "-6", "route", "add", str(spec.router6), "dev", "eth0")
            run(*ip, "-6", "route", "add", "default", "via", str(spec.router6), "dev", "eth0")
            run(*ip, "route", "add", f"{spec.router4}/32", "dev", "eth0")
            run(*ip, "route", "add", "default", "via", str(spec.router4), "dev", "eth0")
            out[name] = {"ns": ns, "v6": str(spec.ipv6), "v4": str(spec.ipv4), "dev": prefix + name}
        a, b = made[0][0], made[1][0]
        dp.set_endpoint_policy(b, True, False, {PolicyKey(a.identity, PORT, 6, INGRESS)})
        print(json.dumps(out), flush=True)
        sys.stdin.read()
    finally:
        for spec, ns in made:
            dp.delete_endpoint(spec)
            run("ip", "netns", "del", ns, check=False)
        dp.close()
        firewall.remove_forwarding(prefix)
        firewall.remove_masquerade(prefix)
        portmap.teardown(prefix)
        run("rm", "-rf", pin_dir, check=False)


def prog_ids(devs: list[str]) -> set[int]:
    ids = set()
    for dev in devs:
        for hook in ("ingress", "egress"):
            ids |= {
                int(x)
                for x in re.findall(
                    r" id (\d+)", run("tc", "filter", "show", "dev", dev, hook).stdout
                )
            }
    return ids


def bpf_stats(ids: set[int]) -> tuple[int, int]:
    """(run time ns, runs) of the programs ids, summed."""
    progs = json.loads(run("bpftool", "prog", "show", "-j").stdout)
    mine = [p for p in progs if p["id"] in ids]
    return sum(p.get("run_time_ns", 0) for p in mine), sum(p.get("run_cnt", 0) for p in mine)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stand":
        stand(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pycilium-ab-") as tmp:
        tcpbench = f"{tmp}/tcpbench"
        run("gcc", "-O2", "-Wall", "-Werror", "-o", tcpbench, str(REPO / "bench" / "tcpbench.c"))
        with contextlib.ExitStack() as stack:
            stands, servers, ids = {}, {}, {}
            for name, rev in (("old", args.old), ("new", args.new)):
                root = f"{tmp}/{name}"
                os.mkdir(root)
                archive = subprocess.run(
                    ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
                )
                subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
                child = subprocess.Popen(
                    [sys.executable, __file__, "--stand", root, *STANDS[name]],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                stack.callback(child.wait)
                stack.callback(child.stdin.close)
                line = child.stdout.readline()
                if not line:
                    sys.exit(f"the {name} datapath ({rev}) did not come up")
                stands[name] = json.loads(line)
                server = subprocess.Popen(
                    ["ip", "netns", "exec", stands[name]["b"]["ns"], tcpbench, "server", str(PORT)]
                )
                stack.callback(server.wait)
                stack.callback(server.kill)
                servers[name] = server.pid  # ip netns exec execs tcpbench
                ids[name] = prog_ids([stands[name]["a"]["dev"], stands[name]["b"]["dev"]])
            time.sleep(0.5)
            results = measure(args, tcpbench, stands, servers, ids)
    report(results)


def measure(args, tcpbench, stands, servers, ids) -> dict:
    results = {}
    for r in range(args.rounds):
        for mode in ("rr", "crr"):
            for fam in ("v6", "v4"):
                row = {}
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    s = stands[name]
                    run("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
                    bpf0, cpu0 = bpf_stats(ids[name]), cpu_seconds(servers[name])
                    client = subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            s["a"]["ns"],
                            tcpbench,
                            mode,
                            s["b"][fam],
                            str(PORT),
                            str(args.seconds),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    out = client.stdout.read()
                    _, status, usage = os.wait4(client.pid, 0)
                    client.returncode = os.waitstatus_to_exitcode(status)
                    bpf1, cpu1 = bpf_stats(ids[name]), cpu_seconds(servers[name])
                    if client.returncode:
                        sys.exit(f"tcpbench {mode} failed on {name}")
                    ops = int(out.split()[0])
                    cpu = usage.ru_utime + usage.ru_stime + cpu1 - cpu0
                    runs = bpf1[1] - bpf0[1]
                    row[name] = {
                        "rate": ops / args.seconds,
                        "cpu_us": cpu * 1e6 / ops,
                        # 2 runs per rr transaction, 8 per crr connection before; fewer: the
                        # statistics went off meanwhile
                        "bpf_ns": (bpf1[0] - bpf0[0]) / ops if runs >= ops else None,
                    }
                results.setdefault((mode, fam), []).append(row)
                print(r, mode, fam, json.dumps(row), flush=True)
    run("sysctl", "-qw", "kernel.bpf_stats_enabled=0")
    return results


def report(results: dict) -> None:
    for (mode, fam), rows in results.items():
        print(f"{mode} {fam}:")
        for key, unit in (("rate", "/s"), ("cpu_us", " us CPU/op"), ("bpf_ns", " ns BPF/op")):
            pairs = [
                (x["old"][key], x["new"][key]) for x in rows if x["old"][key] and x["new"][key]
            ]
            if not pairs:
                continue
            ratios = [new / old for old, new in pairs]
            print(
                f"  {key}: old {statistics.median(p[0] for p in pairs):.2f}{unit}, "
                f"new {statistics.median(p[1] for p in pairs):.2f}{unit}, new/old median "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}, "
                f"{len(pairs)} rounds)"
            )


if __name__ == "__main__":
    main()
