"""Cross-host benchmark (issue 14, `make bench`): TCP between a container namespace on one
simulated host and one on another, through pycilium's VXLAN datapath against a plain kernel
VXLAN link over the same underlay between the same two hosts.

  hosts        two network namespaces (pcx-host1, pcx-host2) joined by two veth pairs of the
               same kind, one underlay per path (198.18.2.0/25 pycilium's, .128/25 the
               reference's, so that pycilium's from_netdev on its node's device is not on
               the reference's path), in RFC 2544's benchmarking range, outside
               scripts/cluster.sh's 198.18.0.0/24 and the multi-host tests' 198.18.1.0/24;
               no default route anywhere, nothing in the root namespace.
  pycilium     on each host the real datapath (datapath.Datapath: BPF compiled and attached,
               the VXLAN device in external mode on UDP 8472, the cluster ranges unreachable)
               in a child process that entered the host's namespace, as the driver runs it;
               one endpoint per host in the driver's default node ranges (node K: the K-th
               block), the other host's node and endpoint in the ipcache as the control
               plane writes them from etcd, and the server's ingress policy enforced (it
               allows the client's identity on the two benchmark ports). Flow events off
               (the driver turns them on with a flow log; run.py's flows scenario prices that).
  reference    on each host a plain VXLAN device (VNI 42, UDP 4789, the other host as its
               one remote, an address on a link net of its own) and a veth to a namespace
               routed through it: plain routes, no BPF. Same MTU accounting: the underlay's
               1500 less VXLAN's 50 on the tunnel and on both ends of every container veth.
               The host namespaces have the datapath's netfilter rules (as a Docker host has
               rules), so conntrack sees the reference's packets, inner and outer, and
               pycilium's outer ones (its inner ones are redirected past netfilter);
               --notrack-reference exempts the reference's from conntrack (raw NOTRACK).

Measures, interleaved round by round (A B, then B A): iperf3 (one TCP stream) and tcpbench
rr and crr (bench/tcpbench.c) from host 1's namespace to host 2's, IPv6 and IPv4. With each
stream it notes where the CPUs went: each CPU's busy share, how often the client and the
server were last on the same CPU, iperf3's retransmits and RCU softirqs per GB;
--pin-stream puts the client and the server on given CPUs on both paths, to take the
scheduler's placement out. Writes
bench/results/<time>-crosshost.{json,md}. Removes all it made on exit, also on failure or
Ctrl-C: the namespaces take their links, routes, programs and rules with them; the pin dirs
are removed.

Why not the driver and etcd: the control plane only writes the maps this script writes; the
datapath is what a packet meets. bench/cluster.py measures the control plane (convergence).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from common import container_netns, docker_addresses, quiet, stop
from run import build_tcpbench, paired, run, stats

REPO = Path(__file__).resolve().parent.parent
NAME = "pcx"  # prefix of every namespace and veth prefix of the pycilium endpoints
UNDERLAY = ipaddress.IPv4Network("198.18.2.0/24")
# Two veth pairs of the same kind between the host namespaces: pycilium's underlay (its
# from_netdev runs on the node address's device) and the reference's, so that no BPF
# program is on the reference's path.
UNDERLAY_NETS = dict(zip(("pycilium", "vxlan"), UNDERLAY.subnets(1), strict=True))
UNDERLAY_LINKS = {"pycilium": "pcxul", "vxlan": "pcxulr"}
# The driver's default cluster ranges (driver/config.py): node K's IPv6 prefix is the /96
# with K in the node-id bits, its IPv4 block the K-th /20.
CLUSTER6 = ipaddress.IPv6Network("fdce:1c00::/64")
CLUSTER4 = ipaddress.IPv4Network("10.213.0.0/16")
# The reference: host K's containers in REF6 :K::/64 and 198.18.(2+K).0/24, the VXLAN link
# in REF6 :ff::/64 and 198.18.5.0/24 (all of it in the host namespaces only).
REF6 = ipaddress.IPv6Network("fdbe:7c00:c5::/48")
REF_VNI, REF_PORT, REF_DEVICE = 42, 4789, "pcxvx"
VXLAN_OVERHEAD = 50  # as datapath/netlink.py: outer Ethernet, IPv4, UDP, VXLAN
UNDERLAY_MTU = 1500
CLIENT_ID, SERVER_ID = 1001, 2001  # the endpoints' identities
PORT, TPORT = 5201, 5202  # iperf3, tcpbench
TESTS = ("stream", "rr", "crr")
PATHS = ("pycilium", "vxlan")
UNITS = {"stream": "Gbit/s", "rr": "transactions/s", "crr": "connections/s"}
TARGET = 0.9


def cpu_times() -> list[tuple[int, int]]:
    """(busy, all) jiffies of each CPU, from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in fields]
            out.append((sum(v) - v[3] - v[4], sum(v)))  # less idle and iowait
    return out


def rcu_softirqs() -> int:
    """RCU softirqs so far, all CPUs (/proc/softirqs): what freeing through call_rcu costs,
    e.g. the metadata dst an external-mode VXLAN device allocates per received packet."""
    for line in Path("/proc/softirqs").read_text().splitlines():
        name, *counts = line.split()
        if name == "RCU:":
            return sum(int(x) for x in counts)
    return 0


def last_cpu(pid: int) -> int:
    """The CPU a process last ran on (field 39 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[36])


def log(msg: str) -> None:
    print(f"crosshost: {msg}", file=sys.stderr, flush=True)


def host_ns(k: int) -> str:
    return f"{NAME}-host{k}"


def container_ns(k: int, path: str) -> str:
    return f"{NAME}-h{k}-{'cil' if path == 'pycilium' else 'ref'}"


def pin_dir(k: int) -> str:
    return f"/sys/fs/bpf/{NAME}-host{k}"


def node_prefixes(k: int) -> tuple[ipaddress.IPv6Network, ipaddress.IPv4Network]:
    net6 = ipaddress.IPv6Network((int(CLUSTER6.network_address) + (k << 32), 96))
    net4 = list(CLUSTER4.subnets(new_prefix=20))[k]
    return net6, net4


def ref_nets(k: int) -> tuple[ipaddress.IPv6Network, ipaddress.IPv4Network]:
    net6 = ipaddress.IPv6Network((int(REF6.network_address) + (k << 64), 64))
    return net6, ipaddress.IPv4Network(f"198.18.{2 + k}.0/24")


def ref_link(k: int) -> tuple[ipaddress.IPv6Address, ipaddress.IPv4Address]:
    return REF6.network_address + (0xFF << 64) + k, ipaddress.IPv4Address(f"198.18.5.{k}")


def endpoint_addresses(k: int) -> tuple[ipaddress.IPv6Address, ipaddress.IPv4Address]:
    net6, net4 = node_prefixes(k)
    return net6[2], net4[2]


# --- the pycilium datapath of one host ----------------------------------------------------------


def _host_datapath(k: int, conn, parents_end) -> None:
    """The child: host k's Datapath in its namespace, as the driver starts it, with one
    endpoint; then waits until the parent says stop or goes. The namespace's removal takes
    the links and routes; the parent removes the pin dir."""
    from pyroute2.netns import setns

    from datapath import Datapath, EndpointSpec
    from datapath.abi import HOST_ID, INGRESS, PROTO_TCP, PolicyKey

    parents_end.close()  # forked with it: else the parent's exit would not end the recv below
    try:
        setns(host_ns(k))
        dp = Datapath(pin_dir=pin_dir(k), veth_prefix=NAME)
        dp.start()
        dp.add_unreachable_route(str(CLUSTER6))
        dp.add_unreachable_route(str(CLUSTER4))
        node = UNDERLAY_NETS["pycilium"]
        dp.set_cidr_identities({f"{node[k]}/32": HOST_ID})
        dp.enable_tunnel(str(node[k]))
        other = 3 - k
        dp.set_remote_node(str(node[other]), [str(n) for n in node_prefixes(other)])
        identity = CLIENT_ID if k == 1 else SERVER_ID
        peer_identity = SERVER_ID if k == 1 else CLIENT_ID
        for address in endpoint_addresses(other):
            dp.ipcache_upsert(str(address), peer_identity, str(node[other]))
        net6, net4 = node_prefixes(k)
        ip6, ip4 = endpoint_addresses(k)
        spec = EndpointSpec(
            endpoint_id=k,
            host_ifname=f"{NAME}ep{k}",
            peer_ifname=f"{NAME}pe{k}",
            mac=f"02:dc:5a:00:00:{k:02x}",
            ipv6=ip6,
            ipv4=ip4,
            router6=net6[1],
            router4=net4[1],
            identity=identity,
        )
        dp.create_endpoint(spec)
        if k == 2:  # the server: ingress enforced, the client allowed on the benchmark ports
            keys = [PolicyKey(CLIENT_ID, p, PROTO_TCP, INGRESS) for p in (PORT, TPORT)]
            dp.set_endpoint_policy(spec, True, False, keys)
        conn.send(("ok", {"peer": spec.peer_ifname, "router6": str(net6[1])}))
    except Exception as exc:
        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
        return
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        conn.recv()
    dp.close()


def start_datapath(k: int, stack: contextlib.ExitStack) -> dict:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_host_datapath, args=(k, theirs, ours), daemon=True
    )
    child.start()
    theirs.close()
    stack.callback(_end_child, child, ours)
    if not ours.poll(600):
        raise RuntimeError(f"host {k}'s datapath did not start within 600 s")
    status, result = ours.recv()
    if status != "ok":
        raise RuntimeError(f"host {k}'s datapath failed: {result}")
    return result


def _end_child(child, conn) -> None:
    with contextlib.suppress(OSError):  # a child that failed has gone
        conn.send("stop")
    conn.close()
    child.join(30)
    if child.is_alive():
        child.kill()
        child.join(10)


# --- namespaces ---------------------------------------------------------------------------------


def remove_all() -> None:
    """Everything this script makes, whatever state a run left it in."""
    for k in (1, 2):
        for path in PATHS:
            quiet("ip", "netns", "del", container_ns(k, path))
        quiet("ip", "netns", "del", host_ns(k))
        shutil.rmtree(pin_dir(k), ignore_errors=True)


def _container(k: int, path: str, host_if: str) -> str:
    """A namespace for a container of host k; host_if (in the host namespace) becomes its eth0."""
    ns = container_ns(k, path)
    container_netns(run, ns, host_if, from_ns=host_ns(k))
    return ns


def setup_hosts() -> None:
    for k in (1, 2):
        run("ip", "netns", "add", host_ns(k))
        run("ip", "-n", host_ns(k), "link", "set", "lo", "up")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            run("ip", "netns", "exec", host_ns(k), "sysctl", "-qw", f"{key}=1")
    h1, h2 = (("ip", "-n", host_ns(k)) for k in (1, 2))
    for path, link in UNDERLAY_LINKS.items():
        net = UNDERLAY_NETS[path]
        run(*h1, "link", "add", link, "type", "veth", "peer", "name", link, "netns", host_ns(2))
        for k, ip in ((1, h1), (2, h2)):
            run(*ip, "link", "set", link, "mtu", str(UNDERLAY_MTU))
            run(*ip, "addr", "add", f"{net[k]}/{net.prefixlen}", "dev", link)
            run(*ip, "link", "set", link, "up")


def setup_pycilium(k: int, stack: contextlib.ExitStack) -> dict:
    info = start_datapath(k, stack)
    ns = _container(k, "pycilium", info["peer"])
    ip6, ip4 = endpoint_addresses(k)
    net6, net4 = node_prefixes(k)
    docker_addresses(run, ns, ip6, ip4, net6[1], net4[1])
    return {"ns": ns, "v6": str(ip6), "v4": str(ip4)}


def setup_reference(k: int, notrack: bool) -> dict:
    hip = ("ip", "-n", host_ns(k))
    other = 3 - k
    mtu = str(UNDERLAY_MTU - VXLAN_OVERHEAD)
    ul = UNDERLAY_NETS["vxlan"]
    run(*hip, "link", "add", REF_DEVICE, "mtu", mtu, "type", "vxlan", "id", str(REF_VNI),
        "dstport", str(REF_PORT), "local", str(ul[k]), "remote", str(ul[other]), "dev",
        UNDERLAY_LINKS["vxlan"])  # fmt: skip
    l6, l4 = ref_link(k)
    run(*hip, "addr", "add", f"{l6}/64", "dev", REF_DEVICE, "nodad")
    run(*hip, "addr", "add", f"{l4}/24", "dev", REF_DEVICE)
    run(*hip, "link", "set", REF_DEVICE, "up")
    o6, o4 = ref_link(other)
    for net, via in zip(ref_nets(other), (o6, o4), strict=True):
        run(*hip, "route", "add", str(net), "via", str(via), "dev", REF_DEVICE)
    if notrack:
        rules = [("PREROUTING", "-i", dev) for dev in ("refhost", REF_DEVICE)]
        for tool in ("iptables", "ip6tables"):
            for chain, opt, dev in rules:
                run("ip", "netns", "exec", host_ns(k), tool, "-t", "raw", "-A", chain, opt, dev,
                    "-j", "NOTRACK")  # fmt: skip
        link = UNDERLAY_LINKS["vxlan"]
        for chain, opt in (("PREROUTING", "-i"), ("OUTPUT", "-o")):
            run("ip", "netns", "exec", host_ns(k), "iptables", "-t", "raw", "-A", chain, opt,
                link, "-j", "NOTRACK")  # fmt: skip
    net6, net4 = ref_nets(k)
    host_if = f"{NAME}ref{k}"
    run(*hip, "link", "add", "refhost", "mtu", mtu, "type", "veth", "peer", "name", host_if,
        "mtu", mtu)  # fmt: skip
    run(*hip, "addr", "add", f"{net6[1]}/64", "dev", "refhost", "nodad")
    run(*hip, "addr", "add", f"{net4[1]}/24", "dev", "refhost")
    run(*hip, "link", "set", "refhost", "up")
    ns = _container(k, "vxlan", host_if)
    ip = ("ip", "-n", ns)
    run(*ip, "-6", "addr", "add", f"{net6[2]}/64", "dev", "eth0", "nodad")
    run(*ip, "addr", "add", f"{net4[2]}/24", "dev", "eth0")
    run(*ip, "-6", "route", "add", "default", "via", str(net6[1]))
    run(*ip, "route", "add", "default", "via", str(net4[1]))
    return {"ns": ns, "v6": str(net6[2]), "v4": str(net4[2])}


class CrossHost:
    """The two hosts with both paths, servers on host 2, clients on host 1."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        tcpbench: Path,
        notrack: bool = False,
        pin: tuple[int, int] | None = None,
    ):
        self.stack = stack
        self.notrack = notrack
        self.pin = pin  # (client CPU, server CPU) of the streams, or the scheduler's choice
        self.tcpbench_exe = tcpbench
        self.clients: dict[str, dict] = {}  # path -> {"ns": ..., "v6": server, "v4": server}
        self.stream_servers: dict[str, int] = {}  # path -> the iperf3 server's pid
        self.last_stream: dict = {}  # where the CPUs went during the last stream
        self.stream_cpus: dict = {}  # fam -> path -> the last_stream of each round

    def setup(self) -> None:
        remove_all()  # a killed run's
        self.stack.callback(remove_all)
        setup_hosts()
        ends = {}
        for path in PATHS:
            for k in (1, 2):
                if path == "pycilium":
                    ends[path, k] = setup_pycilium(k, self.stack)
                else:
                    ends[path, k] = setup_reference(k, self.notrack)
            server = ends[path, 2]
            for command in (
                ["iperf3", "-s", "-p", str(PORT)],
                [str(self.tcpbench_exe), "server", str(TPORT)],
            ):
                srv = subprocess.Popen(
                    ["ip", "netns", "exec", server["ns"], *command],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.stack.callback(stop, srv)
                if command[0] == "iperf3":  # `ip netns exec` execs it: the same pid
                    self.stream_servers[path] = srv.pid
                    if self.pin:
                        os.sched_setaffinity(srv.pid, {self.pin[1]})
            self.clients[path] = {"ns": ends[path, 1]["ns"], "v6": server["v6"],
                                  "v4": server["v4"]}  # fmt: skip

    def measure(self, path: str, fam: str, test: str, seconds: float) -> float:
        c = self.clients[path]
        nsx = ["ip", "netns", "exec", c["ns"]]
        if test == "stream":
            cmd = [*nsx, "iperf3", "-c", c[fam], "-p", str(PORT), "-t", str(int(seconds)), "-J",
                   "--connect-timeout", "3000"]  # fmt: skip
        else:
            cmd = [*nsx, str(self.tcpbench_exe), test, c[fam], str(TPORT), str(seconds)]
        last = ""
        for _ in range(5):  # the servers may still be starting
            if test == "stream":
                proc = self.stream(path, cmd, seconds)
            else:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, check=False, timeout=seconds + 30
                )
            if proc.returncode == 0 and test != "stream":
                return float(proc.stdout.split()[2])
            res = json.loads(proc.stdout) if proc.stdout.startswith("{") else {}
            if proc.returncode == 0 and "sum_received" in res.get("end", {}):
                end = res["end"]
                self.last_stream["retransmits"] = end["sum_sent"].get("retransmits", 0)
                gbytes = max(1e-9, end["sum_received"]["bytes"] / 1e9)
                self.last_stream["rcu_per_gb"] = round(self.last_stream.pop("rcu") / gbytes)
                return res["end"]["sum_received"]["bits_per_second"] / 1e9
            last = (res.get("error") or proc.stdout[-300:]) + proc.stderr[-300:]
            time.sleep(1)
        raise RuntimeError(f"{test} over {path} {fam} failed: {last}")

    def stream(self, path: str, cmd: list[str], seconds: float) -> subprocess.CompletedProcess:
        """Run an iperf3 client; meanwhile note each CPU's busy share and how often client
        and server were last on the same CPU (sampled every 5 ms) into self.last_stream."""
        pin = {"preexec_fn": lambda: os.sched_setaffinity(0, {self.pin[0]})} if self.pin else {}
        before, rcu = cpu_times(), rcu_softirqs()
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  **pin)  # fmt: skip
        same = total = 0
        deadline = time.monotonic() + seconds + 30
        while client.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):  # starting, or gone
                same += last_cpu(client.pid) == last_cpu(self.stream_servers[path])
                total += 1
            time.sleep(0.005)
        try:
            out, err = client.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            client.kill()
            out, err = client.communicate()
        after = cpu_times()
        self.last_stream = {
            "busy": [round((b1 - b0) / max(1, t1 - t0), 3)
                     for (b0, t0), (b1, t1) in zip(before, after, strict=True)],
            "same_cpu": round(same / max(1, total), 3),
            "rcu": rcu_softirqs() - rcu,
        }  # fmt: skip
        return subprocess.CompletedProcess(cmd, client.returncode, out, err)

    def rounds(self, a: argparse.Namespace) -> dict:
        """samples[test][fam][path], the order of the paths reversed every other round."""
        samples = {t: {f: {p: [] for p in PATHS} for f in a.families} for t in TESTS}
        self.stream_cpus = {f: {p: [] for p in PATHS} for f in a.families}
        for r in range(a.rounds):
            order = PATHS if r % 2 == 0 else PATHS[::-1]
            for t in TESTS:
                seconds = a.duration if t == "stream" else a.rr_duration
                for fam in a.families:
                    for p in order:
                        x = self.measure(p, fam, t, seconds)
                        samples[t][fam][p].append(x)
                        note = ""
                        if t == "stream":
                            self.stream_cpus[fam][p].append(self.last_stream)
                            note = f"  {self.last_stream}"
                        log(f"round {r + 1}/{a.rounds} {t:6} {fam} {p:8} {x:10.2f} {UNITS[t]}"
                            + note)  # fmt: skip
        return samples


# --- reporting ----------------------------------------------------------------------------------


def summarize(samples: dict) -> dict:
    return {
        t: {
            fam: {
                p: {"value": stats(xs), "ratio": paired(xs, per["vxlan"])} for p, xs in per.items()
            }
            for fam, per in per_fam.items()
        }
        for t, per_fam in samples.items()
    }


def targets(samples: dict) -> list[dict]:
    out = []
    for t, per_fam in samples.items():
        for fam, per in per_fam.items():
            r = paired(per["pycilium"], per["vxlan"])
            out.append(
                {
                    "target": f"IPv{fam[1]} {t} across hosts, pycilium >= {TARGET} x plain VXLAN",
                    "ratio": r,
                    "met": r["median"] >= TARGET,
                }
            )
    return out


def stream_cpu_lines(per_fam: dict, pin: list[int] | None) -> list[str]:
    """Where the CPUs went during the streams, medians over the rounds."""
    where = f"client pinned to CPU {pin[0]}, server to CPU {pin[1]}" if pin else "not pinned"
    lines = [
        "",
        f"## stream: the CPUs ({where})",
        "",
        "Busy share of each CPU over the run (all of the machine's work), the share of 5 ms "
        "samples in which iperf3's client and server were last on the same CPU, iperf3's "
        "retransmits, RCU softirqs per GB received (the machine's).",
        "",
        "| family | path | busy per CPU | client and server on one CPU | retransmits "
        "| RCU softirqs / GB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for fam, per in per_fam.items():
        for path, runs in per.items():
            if not runs:
                continue
            busy = " / ".join(
                f"{statistics.median(cpu):.2f}"
                for cpu in zip(*(r["busy"] for r in runs), strict=True)
            )
            same = statistics.median(r["same_cpu"] for r in runs)
            retrans = statistics.median(r.get("retransmits", 0) for r in runs)
            rcu = statistics.median(r.get("rcu_per_gb", 0) for r in runs)
            lines.append(
                f"| IPv{fam[1]} | {path} | {busy} | {same:.2f} | {retrans:.0f} | {rcu:.0f} |"
            )
    return lines


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        f"# pycilium cross-host benchmark, {result['date']}",
        "",
        f"Host: {result['host']['kernel']}, {result['host']['cpus']} CPUs, commit "
        f"{result['host']['commit'][:12]}. `{result['command']}`, {result['seconds']} s. "
        f"Two simulated hosts (network namespaces on a veth underlay, MTU {UNDERLAY_MTU}); "
        f"client on host 1, server on host 2; container MTU {UNDERLAY_MTU - VXLAN_OVERHEAD} "
        "on both paths. pycilium: its BPF datapath and VXLAN device in external mode, the "
        "server's ingress policy enforced; plain VXLAN: a kernel VXLAN device per host with "
        f"the other as its remote, plain routes, no BPF"
        + (", its packets exempt from conntrack" if a["notrack_reference"] else "")
        + f". {a['rounds']} interleaved rounds; "
        "median (min-max); ratio = median of the per-round ratios to the plain VXLAN run of "
        f"the same round. iperf3 {a['duration']} s, tcpbench {a['rr_duration']} s per run.",
    ]
    for t in TESTS:
        fmt = "{:.2f}" if t == "stream" else "{:.0f}"
        if t == "stream" and result.get("stream_cpus"):
            lines += stream_cpu_lines(result["stream_cpus"], a.get("pin_stream"))
        lines += [
            "",
            f"## {t}",
            "",
            f"| family | path | {UNITS[t]} median | min | max | ratio to plain VXLAN (min-max) |",
            "|---|---|---:|---:|---:|---|",
        ]
        for fam, per in result["summary"][t].items():
            for p, s in per.items():
                g, q = s["value"], s["ratio"]
                lines.append(
                    f"| IPv{fam[1]} | {p} | {fmt.format(g['median'])} | {fmt.format(g['min'])} "
                    f"| {fmt.format(g['max'])} | {q['median']:.2f} ({q['min']:.2f}-"
                    f"{q['max']:.2f}) |"
                )
    lines += ["", "## Targets (issue 14)", "", "| target | ratio median (min-max) | met |"]
    lines.append("|---|---|---|")
    for t in result["targets"]:
        r = t["ratio"]
        lines.append(
            f"| {t['target']} | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run (3)")
    p.add_argument("--rr-duration", type=float, default=2, help="seconds per tcpbench run (2)")
    p.add_argument("--families", default="v6,v4", help="v6,v4")
    p.add_argument(
        "--notrack-reference",
        action="store_true",
        help="exempt the reference's packets from netfilter's conntrack (raw NOTRACK)",
    )
    p.add_argument(
        "--pin-stream",
        metavar="C,S",
        help="run the streams' iperf3 client on CPU C and server on CPU S, on both paths",
    )
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--build", default=str(REPO / "build" / "bench"), help="where tcpbench is built")
    a = p.parse_args(argv)
    a.families = [f.strip() for f in a.families.split(",") if f.strip()]
    if not a.families or not set(a.families) <= {"v6", "v4"}:
        p.error("--families: v6 and/or v4")
    if a.pin_stream is not None:
        try:
            a.pin_stream = [int(x) for x in a.pin_stream.split(",")]
        except ValueError:
            a.pin_stream = []
        if len(a.pin_stream) != 2 or not set(a.pin_stream) <= os.sched_getaffinity(0):
            p.error("--pin-stream: two CPUs this process may run on, e.g. 0,1")
    if a.rounds < 1 or a.duration < 1 or a.rr_duration <= 0:
        p.error("--rounds, --duration and --rr-duration must be positive")
    return a


def measure(a: argparse.Namespace) -> dict:
    """Set up, measure, tear down: the samples and the seconds it all took."""
    t0 = time.monotonic()
    exe = build_tcpbench(Path(a.build))
    with contextlib.ExitStack() as stack:
        pin = tuple(a.pin_stream) if a.pin_stream else None
        bench = CrossHost(stack, exe, a.notrack_reference, pin)
        log("setting up two hosts, both paths (the BPF compile takes a while)")
        bench.setup()
        samples = bench.rounds(a)
        log("cleaning up")
    return {
        "samples": samples,
        "stream_cpus": bench.stream_cpus,
        "seconds": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("crosshost: ERROR: must run as root")
    for tool in ("iperf3", "gcc"):
        run("sh", "-c", f"command -v {tool}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    now = dt.datetime.now(dt.UTC)
    measured = measure(a)
    result = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/crosshost.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: v for k, v in vars(a).items() if k not in ("results", "build")},
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "iperf3": run("iperf3", "--version").splitlines()[0],
            "commit": run("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).strip(),
        },
        "seconds": measured["seconds"],
        "samples": measured["samples"],
        "stream_cpus": measured["stream_cpus"],
        "summary": summarize(measured["samples"]),
        "targets": targets(measured["samples"]),
    }
    stem = now.strftime("%Y-%m-%dT%H%MZ") + "-crosshost"
    outdir = Path(a.results)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (outdir / f"{stem}.md").write_text(md)
    print(md)
    for path in (outdir / f"{stem}.json", outdir / f"{stem}.md"):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
