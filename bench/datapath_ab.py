"""Rate, CPU and BPF cost per operation of the datapath between endpoints of one node, no
Docker and no driver: of one revision, or an interleaved A/B of two.

Each revision's sources (`git archive`; "." is the working tree as it is, the default) get a
Datapath of their own, on their own pin dir, veth prefix and ranges, with a client a and two
backends b and c in namespaces set up as Docker would (b's and c's ingress policy enforced,
admitting a on the port) and a VIP with b and c as its backends. tcpbench rr and crr from a,
IPv6 and IPv4, directly (crr to b and c in turn, rr to b) and through the VIP. With two
revisions the stands are side by side and the runs alternate, the order flipping every
round, so that what else the machine does falls on both. Per run: the rate, the CPU time of
the client and server processes per operation (their softirq work is mostly theirs: the
machine's other load does not stretch it as it does the rate) and, with
kernel.bpf_stats_enabled, the BPF run time per operation of all programs on the stand's
three veths and of each by name (per operation and per run). Only those programs count,
not other BPF users of the machine. Printed: a line per run, then medians per case, and
with two revisions the median of the per-round new/old ratios. Run as root, with nothing
else toggling kernel.bpf_stats_enabled (bench/bpf-stats.sh; runs where it went off are
left out of the BPF figures). Revision k's endpoints are in 2001:db8:abk::/64 and
10.194.k.0/24, its VIP in 2001:db8:abk:5::/64 and 10.193.k.0/24 (no test suite uses them;
unreachable meanwhile). Everything is named pab*/pap*/pycilium-ab-* and removed at the end:

    .venv/bin/python bench/datapath_ab.py [REV [NEW_REV]] [--rounds 12] [--seconds 1]
"""

import argparse
import contextlib
import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import container_netns, docker_addresses

REPO = Path(__file__).resolve().parent.parent
PORT, VIP_PORT, TCP = 5201, 80, 6
HZ = os.sysconf("SC_CLK_TCK")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=120)


def ranges(tag: str) -> tuple:
    """Endpoint IPv6 and IPv4 ranges, service IPv6 and IPv4 ranges of stand tag."""
    return (
        ipaddress.IPv6Network(f"2001:db8:ab{tag}::/64"),
        ipaddress.IPv4Network(f"10.194.{tag}.0/24"),
        ipaddress.IPv6Network(f"2001:db8:ab{tag}:5::/64"),
        ipaddress.IPv4Network(f"10.193.{tag}.0/24"),
    )


def stand(root: str, tag: str) -> None:
    """Child: a Datapath from root's sources with endpoints a, b, c and the VIP; prints them
    as a JSON line, removes everything when stdin closes."""
    sys.path.insert(0, root)
    from datapath import INGRESS, Backend, Datapath, EndpointSpec, Frontend, PolicyKey
    from datapath.netfilter import firewall, portmap

    net6, net4, svc6, svc4 = ranges(tag)
    prefix, pin_dir = f"pab{tag}", f"/sys/fs/bpf/pycilium-ab-{tag}"
    dp = Datapath(pin_dir=pin_dir, veth_prefix=prefix, service_ranges=(str(svc6), str(svc4)))
    made, routes, out = [], [], {}
    try:
        dp.start()
        for net in map(str, (net6, net4, svc6, svc4)):
            dp.add_unreachable_route(net)
            routes.append(net)
        for n, name in ((2, "a"), (3, "b"), (4, "c")):
            spec = EndpointSpec(
                endpoint_id=100 + n,
                host_ifname=f"{prefix}{name}",
                peer_ifname=f"pap{tag}{name}",
                mac=f"02:ab:00:00:0{tag}:0{n}",
                ipv6=net6[n],
                ipv4=net4[n],
                router6=net6[1],
                router4=net4[1],
                identity=2000 + n,
            )
            dp.create_endpoint(spec)
            ns = f"pycilium-ab-{tag}-{name}"
            made.append((spec, ns))
            container_netns(run, ns, spec.peer_ifname)
            docker_addresses(run, ns, spec.ipv6, spec.ipv4, spec.router6, spec.router4)
            out[name] = {"ns": ns, "v6": str(spec.ipv6), "v4": str(spec.ipv4), "dev": prefix + name}
        a, backends = made[0][0], [spec for spec, _ in made[1:]]
        for spec in backends:
            dp.set_endpoint_policy(spec, True, False, {PolicyKey(a.identity, PORT, TCP, INGRESS)})
        for fam, vip in (("v6", svc6[10]), ("v4", svc4[10])):
            addrs = [spec.ipv6 if fam == "v6" else spec.ipv4 for spec in backends]
            dp.set_service(
                int(fam[1]), Frontend(vip, VIP_PORT, TCP), [Backend(x, PORT) for x in addrs]
            )
            out[f"vip_{fam}"] = str(vip)
        print(json.dumps(out), flush=True)
        sys.stdin.read()
    finally:
        for spec, ns in made:
            dp.delete_endpoint(spec)
            run("ip", "netns", "del", ns, check=False)
        for net in routes:
            dp.remove_unreachable_route(net)
        dp.close()
        firewall.remove_forwarding(prefix)
        firewall.remove_masquerade(prefix)
        portmap.teardown(prefix)
        run("rm", "-rf", pin_dir, check=False)


def prog_ids(devs: list[str]) -> set[int]:
    ids = set()
    for dev in devs:
        for hook in ("ingress", "egress"):
            shown = run("tc", "filter", "show", "dev", dev, hook).stdout
            ids |= {int(x) for x in re.findall(r" id (\d+)", shown)}
    return ids


def bpf_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    """Program name -> (run time ns, runs), summed over the programs ids of that name."""
    totals: dict[str, tuple[int, int]] = {}
    for prog in json.loads(run("bpftool", "prog", "show", "-j").stdout):
        if prog["id"] in ids:
            t, c = totals.get(prog["name"], (0, 0))
            totals[prog["name"]] = (t + prog.get("run_time_ns", 0), c + prog.get("run_cnt", 0))
    return totals


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stand":
        stand(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "revs", nargs="*", default=["."], help='none, one or two (old new); "." the working tree'
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1)
    args = parser.parse_args()
    if len(args.revs) > 2:
        parser.error("at most two revisions")
    names = ("old", "new") if len(args.revs) == 2 else ("this",)
    with tempfile.TemporaryDirectory(prefix="pycilium-ab-") as tmp:
        tcpbench = f"{tmp}/tcpbench"
        run("gcc", "-O2", "-Wall", "-Werror", "-o", tcpbench, str(REPO / "bench" / "tcpbench.c"))
        with contextlib.ExitStack() as stack:
            stands, servers, ids = {}, {}, {}
            for tag, (name, rev) in enumerate(zip(names, args.revs, strict=True), start=1):
                root = str(REPO) if rev == "." else checkout(rev, f"{tmp}/{name}")
                child = subprocess.Popen(
                    [sys.executable, __file__, "--stand", root, str(tag)],
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
                servers[name] = []
                for backend in ("b", "c"):
                    ns = stands[name][backend]["ns"]
                    server = subprocess.Popen(
                        ["ip", "netns", "exec", ns, tcpbench, "server", str(PORT)]
                    )
                    stack.callback(server.wait)
                    stack.callback(server.kill)
                    servers[name].append(server.pid)  # ip netns exec execs tcpbench
                ids[name] = prog_ids([stands[name][x]["dev"] for x in ("a", "b", "c")])
            time.sleep(0.5)
            results = measure(args, tcpbench, names, stands, servers, ids)
    report(names, results)


def checkout(rev: str, root: str) -> str:
    os.mkdir(root)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
    return root


def targets(stand: dict, fam: str) -> dict[str, tuple[str, int]]:
    return {
        "direct": (f"{stand['b'][fam]},{stand['c'][fam]}", PORT),
        "vip": (stand[f"vip_{fam}"], VIP_PORT),
    }


def measure(args, tcpbench, names, stands, servers, ids) -> dict:
    results = {}
    try:
        for r in range(args.rounds):
            for mode in ("rr", "crr"):
                for fam in ("v6", "v4"):
                    for target in ("direct", "vip"):
                        row = {}
                        for name in names if r % 2 == 0 else names[::-1]:
                            addr, port = targets(stands[name], fam)[target]
                            row[name] = one_run(
                                args,
                                tcpbench,
                                stands[name],
                                servers[name],
                                ids[name],
                                mode,
                                addr,
                                port,
                            )
                        results.setdefault((mode, fam, target), []).append(row)
                        print(r, mode, fam, target, json.dumps(row), flush=True)
    finally:
        run("sysctl", "-qw", "kernel.bpf_stats_enabled=0")
    return results


def one_run(args, tcpbench, stand, servers, ids, mode, addr, port) -> dict:
    """One tcpbench run from a: rate, CPU per operation and the BPF figures."""
    run("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
    bpf0, cpu0 = bpf_stats(ids), sum(map(cpu_seconds, servers))
    cmd = ["ip", "netns", "exec", stand["a"]["ns"], tcpbench, mode, addr, str(port)]
    client = subprocess.Popen([*cmd, str(args.seconds)], stdout=subprocess.PIPE, text=True)
    out = client.stdout.read()
    _, status, usage = os.wait4(client.pid, 0)
    client.returncode = os.waitstatus_to_exitcode(status)
    bpf1, cpu1 = bpf_stats(ids), sum(map(cpu_seconds, servers))
    if client.returncode:
        sys.exit(f"tcpbench {mode} {addr} failed")
    ops = int(out.split()[0])
    cpu = usage.ru_utime + usage.ru_stime + cpu1 - cpu0
    row = {"rate /s": ops / args.seconds, "CPU us/op": cpu * 1e6 / ops}
    delta = {
        prog: tuple(bpf1[prog][i] - bpf0.get(prog, (0, 0))[i] for i in (0, 1)) for prog in bpf1
    }
    # At least 2 runs per operation (an rr transaction's request and answer, each one pass
    # since bpf_redirect_peer; a crr connection has more): fewer, and the statistics went
    # off meanwhile.
    complete = sum(c for _, c in delta.values()) >= 2 * ops
    row["BPF ns/op"] = sum(t for t, _ in delta.values()) / ops if complete else None
    for prog, (t, c) in sorted(delta.items()):
        row[f"{prog} ns/op"] = t / ops if complete else None
        row[f"{prog} ns/run"] = t / c if complete and c else None
    return row


def report(names, results: dict) -> None:
    for (mode, fam, target), rows in results.items():
        print(f"{mode} {fam} {target}, {len(rows)} rounds:")
        keys = dict.fromkeys(key for name in names for key in rows[0][name])
        for key in keys:
            samples = [[x[name].get(key) for name in names] for x in rows]
            samples = [s for s in samples if None not in s]
            if not samples:
                continue
            medians = ", ".join(
                f"{name} {statistics.median(s[i] for s in samples):.2f}"
                for i, name in enumerate(names)
            )
            line = f"  {key}: {medians}"
            ratios = [new / old for old, new in samples if old] if len(names) == 2 else []
            if ratios:
                line += (
                    f", new/old median {statistics.median(ratios):.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f})"
                )
            print(line if len(samples) == len(rows) else f"{line} ({len(samples)} rounds)")


if __name__ == "__main__":
    main()
