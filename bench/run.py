"""pycilium benchmark harness (`make bench`).

Compares, side by side in one invocation: single-stream TCP throughput (iperf3, IPv6 and IPv4),
1-byte request/response rate on one connection and new connections per second (tcpbench, a
small C client/server built at run time) between two network namespaces joined to the host by
veths with plain routing (raw), raw plus the NAT rules Docker puts into every container's
namespace for its embedded DNS (raw-nat: bench/docker-dns-nat.rules in both namespaces),
Docker's bridge, raw plus an ip(6)tables chain of N rules (matching rule last) and two
containers on a cilium network with N policy rules (the allowed flow matching one of them);
throughput, request/response and connection rate through a service VIP with 2 and 16 backends
against the same client talking to one backend directly (and, for crr, to the K backends
directly in turn); the
wall time of `docker run --rm` on a cilium network against the bridge, with the BPF compiles it
caused; throughput and connection rate from a container to a "world" namespace beyond the host
(masqueraded: pycilium, the bridge and a plain namespace behind one MASQUERADE rule), and from
that world to a container's published port (pycilium against the bridge); the stream from an
IPv6-only endpoint to the world's IPv4 through NAT64 against the same stream over plain IPv4
(bench/nat64.py: a datapath of its own, no driver); packets a second and CPU time of a denied
prefix dropped by the XDP prefilter against an iptables raw rule on the same veth
(bench/xdpbench.py, no container). Runs are
interleaved (A B A B ...), every figure is a median with min and max, and every comparison is
the median of per-round ratios to the reference run of the same round. The report ends with
one table of every path against every reference (compare.pairs) and the issues' targets.

Uses the driver that `make run` started (or the one CILIUM_API_SOCKET names); creates only its
own namespaces, containers, networks, ip(6)tables chains and rules, routes, policy rules,
services and prefilter entries (all named pcb*/pcb-bench*/PCB-BENCH*, the world link pcw-bench)
and removes them on exit, even on failure. Raw traffic stays inside test ranges that are
unreachable on the host during the run; VIPs are inside the driver's service ranges; the
world is a namespace on a veth of the host with addresses the host routes nowhere else and no
route back to any container.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nat64
import xdpbench
from common import API, quiet, stop
from compare import RAW_NAT, pairs

from driver.cli.client import ApiClient, ApiError

REPO = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
NETWORK_CIL = "pcb-bench-cil"
NETWORK_BR = "pcb-bench-br"
POLICY_NAME = "bench"
PORT = 5201  # iperf3
TPORT = 5202  # tcpbench
BATCH = 2000  # rules per import request
COMPILE_METRIC = "pycilium_bpf_compile_duration_seconds_count"
CALL_METRIC = "pycilium_plugin_call_duration_seconds"
LIFECYCLE_CALLS = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
TCPBENCH_SRC = REPO / "bench" / "tcpbench.c"
DNS_NAT_RULES = REPO / "bench" / "docker-dns-nat.rules"  # iptables-restore input
SCENARIOS = (
    "throughput",
    "rr",
    "service",
    "lifecycle",
    "outbound",
    "published",
    "nat64",
    "prefilter",
    "flows",
)
# The scenarios that need no container (the rest set up Docker networks and containers).
HOST_SCENARIOS = ("nat64", "prefilter")
# The scenarios measured among the rule-count servers with the policy loaded.
PAIR_SCENARIOS = ("throughput", "rr", "service", "lifecycle", "flows")
WORLD_NS = "pcb-bench-world"
# The world link's host side: outside pcb+, so the raw variants' FORWARD chain (which accepts
# all of pcb+) does not short-cut Docker's and the driver's rules for the world's packets.
WORLD_LINK = "pcw-bench"
OUT_NS, OUT_LINK = "pcb-bench-out", "pcbout"  # outbound's raw variant
OUT_COMMENT = "pcb-bench outbound"
# Published host ports (iperf3, tcpbench), on the world link's host addresses only.
PUBLISH = {"pub-cil": (15201, 15202), "pub-br": (16201, 16202)}
EDGE_TESTS = ("stream", "crr")  # outbound and published: iperf3, tcpbench crr
RR_TESTS = ("rr", "crr")  # tcpbench modes of the rr scenario
SERVICE_TESTS = ("stream", "crr", "rr")
FLOW_TESTS = ("stream", "crr")  # the flows scenario: iperf3 and tcpbench crr, flow log on/off
CONFIG_FLOW_EVENTS = 2  # datapath_config.flags (datapath/abi.py)
UNITS = {"stream": "Gbit/s", "rr": "transactions/s", "crr": "connections/s"}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:200]} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def build_tcpbench(outdir: Path) -> Path:
    """Compile tcpbench.c for this host; it runs from the host inside each namespace."""
    outdir.mkdir(parents=True, exist_ok=True)
    exe = outdir / "tcpbench"
    run("gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(TCPBENCH_SRC))
    return exe


# --- the driver's management socket --------------------------------------------------------


def metric(prefix: str) -> float:
    """Sum of the driver's metric lines starting with prefix (name and labels)."""
    total = 0.0
    for line in API.text("/metrics").splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(None, 1)[1])
    return total


def compile_count() -> float:
    return metric(COMPILE_METRIC)


def call_totals() -> dict[str, tuple[float, float]]:
    """Plugin call -> (seconds, calls) so far, from the driver's histogram."""
    return {
        c: tuple(metric(f'{CALL_METRIC}_{k}{{call="NetworkDriver.{c}"}}') for k in ("sum", "count"))
        for c in LIFECYCLE_CALLS
    }


def map_entries() -> dict[str, int]:
    maps = API.get("/v1/status")["datapath"]["maps"]
    return {m: maps[m]["entries"] for m in ("conntrack", "lb_flows")}


def require_driver() -> None:
    try:
        ApiClient(API.socket_path, timeout=5).text("/metrics")
    except ApiError as exc:
        sys.exit(
            f"bench: ERROR: the cilium driver does not answer on {API.socket_path} ({exc}).\n"
            "Start it with `make run` first (make bench uses that instance)."
        )
    if run(DOCKER, "info", "--format", "{{.ServerVersion}}", check=False).strip() == "":
        sys.exit(f"bench: ERROR: dockerd does not answer ({DOCKER} info): run `make run` first")


# --- ranges ------------------------------------------------------------------------------


def check_ranges(nets: list[ipaddress._BaseNetwork]) -> None:
    """Refuse to run if a test range overlaps any route or address the host already has."""
    for fam in ("-4", "-6"):
        for r in json.loads(run("ip", "-j", fam, "route", "show", "table", "all") or "[]"):
            dst = r.get("dst", "default")
            if dst in ("default", "multicast") or r.get("type") in ("local", "broadcast"):
                continue
            if r.get("type") == "unreachable" and dst in {str(n) for n in nets}:
                continue  # ours, left by a killed run: replaced below
            with contextlib.suppress(ValueError):
                rnet = ipaddress.ip_network(dst, strict=False)
                for n in nets:
                    if n.version == rnet.version and n.overlaps(rnet):
                        sys.exit(
                            f"bench: ERROR: test range {n} overlaps host route {dst}: "
                            "pick others with --range6/--range4"
                        )
        for link in json.loads(run("ip", "-j", fam, "addr") or "[]"):
            for a in link.get("addr_info", []):
                addr = ipaddress.ip_address(a["local"])
                for n in nets:
                    if addr.version == n.version and addr in n:
                        sys.exit(f"bench: ERROR: {n} holds host address {addr} ({link['ifname']})")


# --- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack):
        self.a = args
        self.stack = stack
        self.range6 = ipaddress.ip_network(args.range6)
        self.range4 = ipaddress.ip_network(args.range4)
        self.pairs: dict[str, dict] = {}  # variant -> {"a": ns, "b": ns, "v6": addr, ...}
        self.servers: list[subprocess.Popen] = []
        self.cpair: dict[str, dict] = {}  # variant -> {"cli": container, "v6": addr, "v4": addr}
        # variant -> {"ns": command prefix entering the client's netns, "v6": addr, "v4": addr}
        self.clients: dict[str, dict] = {}
        self.meta: dict = {}
        self.tcpbench_exe = build_tcpbench(Path(args.build))

    def _serve(self, ns: list[str]) -> None:
        """A tcpbench server in the netns that `ns` enters, stopped on exit."""
        srv = subprocess.Popen(
            [*ns, str(self.tcpbench_exe), "server", str(TPORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers.append(srv)
        self.stack.callback(stop, srv)

    # -- raw namespaces and ip(6)tables chains --

    def _subnets(self, k: int):
        s6 = list(self.range6.subnets(new_prefix=64))
        s4 = list(self.range4.subnets(new_prefix=24))
        return (s6[2 * k + 1], s6[2 * k + 2]), (s4[2 * k + 1], s4[2 * k + 2])

    def setup_raw(self) -> None:
        run("ip", "-6", "route", "replace", "unreachable", str(self.range6))
        self.stack.callback(quiet, "ip", "-6", "route", "del", "unreachable", str(self.range6))
        run("ip", "route", "replace", "unreachable", str(self.range4))
        self.stack.callback(quiet, "ip", "route", "del", "unreachable", str(self.range4))
        variants = ["raw", RAW_NAT] + [f"ipt-{n}" for n in self.a.rules]
        for k, variant in enumerate(variants):
            (n6a, n6b), (n4a, n4b) = self._subnets(k)
            pair = {"host": {}}
            for side, n6, n4 in (("a", n6a, n4a), ("b", n6b, n4b)):
                ns, hv = f"pcb-bench-{k}{side}", f"pcb{k}{side}"
                quiet("ip", "netns", "del", ns)  # leftovers of a killed run
                quiet("ip", "link", "del", hv)
                self.stack.callback(quiet, "ip", "netns", "del", ns)
                self.stack.callback(quiet, "ip", "link", "del", hv)
                run("ip", "netns", "add", ns)
                run("ip", "link", "add", hv, "type", "veth", "peer", "name", "eth0", "netns", ns)
                h6, c6 = n6[1], n6[2]
                h4, c4 = n4[1], n4[2]
                run("ip", "addr", "add", f"{h6}/64", "dev", hv, "nodad")
                run("ip", "addr", "add", f"{h4}/24", "dev", hv)
                run("ip", "link", "set", hv, "up")
                nsx = ("ip", "netns", "exec", ns)
                run(*nsx, "ip", "link", "set", "lo", "up")
                run(*nsx, "ip", "addr", "add", f"{c6}/64", "dev", "eth0", "nodad")
                run(*nsx, "ip", "addr", "add", f"{c4}/24", "dev", "eth0")
                run(*nsx, "ip", "link", "set", "eth0", "up")
                # Only the test ranges are routed out of the namespace: no default route.
                run(*nsx, "ip", "-6", "route", "add", str(self.range6), "via", str(h6))
                run(*nsx, "ip", "route", "add", str(self.range4), "via", str(h4))
                if variant == RAW_NAT:
                    run(*nsx, "iptables-restore", input=DNS_NAT_RULES.read_text())
                pair[side] = ns
                pair["host"][side] = hv
                pair[f"v6{side}"], pair[f"v4{side}"] = str(c6), str(c4)
            self.pairs[variant] = pair
            self.clients[variant] = {
                "ns": ["ip", "netns", "exec", pair["a"]],
                "v6": pair["v6b"],
                "v4": pair["v4b"],
            }
            self._serve(["ip", "netns", "exec", pair["b"]])
            srv = subprocess.Popen(
                ["ip", "netns", "exec", pair["b"], "iperf3", "-s", "-p", str(PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.servers.append(srv)
            self.stack.callback(stop, srv)
        self._iptables()

    def _iptables(self) -> None:
        for tool, fam in (("ip6tables", "v6"), ("iptables", "v4")):
            self.stack.callback(self._iptables_clean, tool)
            self._iptables_clean(tool)
            lines = ["*filter", ":PCB-BENCH - [0:0]"]
            for n in self.a.rules:
                lines.append(f":PCB-BENCH-{n} - [0:0]")
            for n in self.a.rules:
                p = self.pairs[f"ipt-{n}"]
                src, dst = p[f"{fam}a"], p[f"{fam}b"]
                for side in ("a", "b"):
                    lines.append(f"-A PCB-BENCH -i {p['host'][side]} -j PCB-BENCH-{n}")
                for i in range(n - 1):
                    lines.append(
                        f"-A PCB-BENCH-{n} -s {src} -d {dst} -p tcp --dport {10000 + i} -j ACCEPT"
                    )
                if n:
                    lines.append(
                        f"-A PCB-BENCH-{n} -s {src} -d {dst} -p tcp -m multiport "
                        f"--dports {PORT},{TPORT} -j ACCEPT"
                    )
            # Whatever the chains did not accept (the reverse direction, raw) is accepted here:
            # Docker's FORWARD policy is DROP for IPv4.
            lines += ["-A PCB-BENCH -j ACCEPT", "-I FORWARD 1 -i pcb+ -j PCB-BENCH", "COMMIT", ""]
            run(f"{tool}-restore", "--noflush", input="\n".join(lines), timeout=600)

    @staticmethod
    def _iptables_clean(tool: str) -> None:
        while (
            subprocess.run(
                [tool, "-D", "FORWARD", "-i", "pcb+", "-j", "PCB-BENCH"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ):
            pass
        out = subprocess.run([tool, "-S"], capture_output=True, text=True, check=False).stdout
        chains = [ln.split()[1] for ln in out.splitlines() if ln.startswith("-N PCB-BENCH")]
        for c in chains:
            quiet(tool, "-F", c)
        for c in chains:
            quiet(tool, "-X", c)

    # -- containers --

    def _container(
        self, name: str, net: str, labels: dict, cmd: list[str], opts: tuple[str, ...] = ()
    ) -> None:
        quiet(DOCKER, "rm", "-f", name)
        self.stack.callback(quiet, DOCKER, "rm", "-f", name)
        lab = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
        run(DOCKER, "run", "-d", "--name", name, "--net", net, *lab, *opts, self.a.image, *cmd)

    def _addrs(self, name: str, net: str) -> tuple[str, str]:
        fmt = (
            f'{{{{with index .NetworkSettings.Networks "{net}"}}}}'
            "{{.GlobalIPv6Address}} {{.IPAddress}}{{end}}"
        )
        v6, v4 = [*run(DOCKER, "inspect", "-f", fmt, name).strip("\n").split(" "), "", ""][:2]
        return v6, v4

    @staticmethod
    def _netns(name: str) -> list[str]:
        pid = run(DOCKER, "inspect", "-f", "{{.State.Pid}}", name).strip()
        return ["nsenter", "-t", pid, "-n"]

    def setup_docker(self, servers: bool) -> None:
        """Both networks and a client on each; the servers of the pair scenarios if asked."""
        # Bridge: a user-defined network of Docker's bridge driver (the same driver and
        # iptables chains as docker0, which has no IPv6 without daemon settings, and the same
        # embedded DNS setup as a cilium network), subnets inside the test ranges.
        quiet(DOCKER, "network", "rm", NETWORK_BR)
        self.stack.callback(quiet, DOCKER, "network", "rm", NETWORK_BR)
        self.br6 = list(self.range6.subnets(new_prefix=64))[-1]
        br4 = list(self.range4.subnets(new_prefix=24))[-1]
        run(
            DOCKER,
            "network",
            "create",
            "--ipv6",
            "--subnet",
            str(self.br6),
            "--subnet",
            str(br4),
            NETWORK_BR,
        )
        if servers:
            self._container("pcb-bench-br-srv", NETWORK_BR, {}, ["iperf3", "-s", "-p", str(PORT)])
        self._container("pcb-bench-br-cli", NETWORK_BR, {}, ["sleep", "infinity"])
        if servers:
            v6, v4 = self._addrs("pcb-bench-br-srv", NETWORK_BR)
            self.cpair["bridge"] = {"cli": "pcb-bench-br-cli", "v6": v6, "v4": v4}
            cli_ns = self._netns("pcb-bench-br-cli")
            self.clients["bridge"] = {**self.cpair["bridge"], "ns": cli_ns}
            self._serve(self._netns("pcb-bench-br-srv"))
            self.meta["dns_nat_as_docker"] = self._dns_nat_as_docker(cli_ns)
        # Cilium: one client, one server per rule count.
        quiet(DOCKER, "network", "rm", NETWORK_CIL)
        self.stack.callback(quiet, DOCKER, "network", "rm", NETWORK_CIL)
        run(
            DOCKER,
            "network",
            "create",
            "-d",
            "cilium",
            "--ipam-driver",
            "cilium",
            "--ipv6",
            NETWORK_CIL,
        )
        self._container(
            "pcb-bench-cil-cli", NETWORK_CIL, {"app": "pcb-bench-cli"}, ["sleep", "infinity"]
        )
        for n in self.a.rules if servers else []:
            name = f"pcb-bench-cil-srv-{n}"
            self._container(
                name, NETWORK_CIL, {"app": f"pcb-bench-srv-{n}"}, ["iperf3", "-s", "-p", str(PORT)]
            )
            v6, v4 = self._addrs(name, NETWORK_CIL)
            self.cpair[f"cil-{n}"] = {"cli": "pcb-bench-cil-cli", "v6": v6, "v4": v4}
            cli_ns = self._netns("pcb-bench-cil-cli")
            self.clients[f"cil-{n}"] = {"ns": cli_ns, "v6": v6, "v4": v4}
            self._serve(self._netns(name))

    @staticmethod
    def _dns_nat_as_docker(ns: list[str]) -> bool:
        """Whether raw-nat's rules are this Docker's: the bridge client's nat rules (IPv4 and
        IPv6) against bench/docker-dns-nat.rules, the random DNS ports aside."""
        docker = dns_nat_rules(run(*ns, "iptables-save", "-t", "nat"))
        docker += [f"IPv6 {r}" for r in dns_nat_rules(run(*ns, "ip6tables-save", "-t", "nat"))]
        same = docker == dns_nat_rules(DNS_NAT_RULES.read_text())
        if not same:
            log(f"Docker's DNS NAT rules differ from {DNS_NAT_RULES.name}: {docker}")
        return same

    def load_policy(self) -> None:
        rules = []
        for n in self.a.rules:
            for i in range(n):
                ports = [PORT, TPORT] if i == n - 1 else [10000 + i]
                rules.append(
                    {
                        "endpointSelector": {"matchLabels": {"app": f"pcb-bench-srv-{n}"}},
                        "labels": [{"key": "name", "value": POLICY_NAME}],
                        "ingress": [
                            {
                                "fromEndpoints": [{"matchLabels": {"app": "pcb-bench-cli"}}],
                                "toPorts": [
                                    {"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}
                                ],
                            }
                        ],
                    }
                )
        self.stack.callback(self._delete_policy)
        if not rules:
            return
        # The API takes at most 1 MiB per request: import in batches. Rules with equal label
        # sets replace each other across imports, so each batch carries its own extra label;
        # `name=bench` is on all of them (one delete removes them all).
        before = compile_count()
        t0 = time.monotonic()
        for k in range(0, len(rules), BATCH):
            batch = rules[k : k + BATCH]
            for rule in batch:
                rule["labels"] = [*rule["labels"], {"key": "bench-batch", "value": str(k)}]
            body = {"text": json.dumps(batch, separators=(",", ":")), "source": "bench"}
            API.request("PUT", "/v1/policy", body)
        self.meta["policy_import"] = {
            "rules": len(rules),
            "seconds": round(time.monotonic() - t0, 3),
            "bpf_compiles": compile_count() - before,
        }
        log(
            f"policy: {len(rules)} rules labelled name={POLICY_NAME} imported in "
            f"{self.meta['policy_import']['seconds']} s"
        )
        entries = {}
        for n in self.a.rules:
            with contextlib.suppress(Exception):
                entries[n] = len(API.get(f"/v1/bpf/policy/pcb-bench-cil-srv-{n}"))
        self.meta["policy_map_entries"] = entries

    @staticmethod
    def _delete_policy() -> None:
        with contextlib.suppress(Exception):
            API.request("DELETE", f"/v1/policy?name={POLICY_NAME}")

    # -- services --

    def setup_services(self) -> None:
        """Backends with tcpbench servers, and one VIP per backend count and family (the VIP
        with K backends is --vip6/--vip4 + K); the direct variant talks to backend 0."""
        for svc in API.get("/v1/services"):  # leftovers of a killed run
            if (svc.get("name") or "").startswith("pcb-bench-"):
                self._delete_service(svc["id"])
        names = [f"pcb-bench-be-{i}" for i in range(max(self.a.backends))]
        addrs = []
        for name in names:
            self._container(name, NETWORK_CIL, {"app": "pcb-bench-be"}, ["sleep", "infinity"])
            self._serve(self._netns(name))
            addrs.append(dict(zip(("v6", "v4"), self._addrs(name, NETWORK_CIL), strict=True)))
        cli_ns = self._netns("pcb-bench-cil-cli")
        self.clients["direct"] = {"ns": cli_ns, **addrs[0]}
        for k in self.a.backends:
            client: dict = {"ns": cli_ns}
            for fam, base in (("v6", self.a.vip6), ("v4", self.a.vip4)):
                if fam not in self.a.families:
                    continue
                vip = ipaddress.ip_address(base) + k
                fmt = "[{}]:{}" if fam == "v6" else "{}:{}"
                body = {
                    "frontend": fmt.format(vip, TPORT),
                    "backends": [fmt.format(a[fam], TPORT) for a in addrs[:k]],
                    "protocol": "tcp",
                    "name": f"pcb-bench-vip{k}-{fam}",
                }
                svc = API.request("PUT", "/v1/services", body)
                self.stack.callback(self._delete_service, svc["id"])
                client[fam] = str(vip)
            self.clients[f"vip-{k}"] = client
            # crr's second reference: new connections spread over the same K servers
            # directly, so what the VIP adds is apart from what K servers cost.
            self.clients[f"rot-{k}"] = {
                "ns": cli_ns,
                **{f: ",".join(a[f] for a in addrs[:k]) for f in self.a.families},
            }
        log(f"services: VIPs with {self.a.backends} backends of {len(names)}")

    @staticmethod
    def _delete_service(service_id: int) -> None:
        with contextlib.suppress(Exception):
            API.request("DELETE", f"/v1/services/{service_id}")

    # -- the world beyond the host: outbound and published --

    def _rule(self, tool: str, table: str, add: str, chain: str, *spec: str) -> None:
        """An ip(6)tables rule (add: -A or -I), deleted on exit; copies a killed run left are
        deleted first."""
        delete = [tool, "-w", "5", "-t", table, "-D", chain, *spec]
        while subprocess.run(delete, capture_output=True, check=False).returncode == 0:
            pass
        run(tool, "-w", "5", "-t", table, add, chain, *spec)
        self.stack.callback(quiet, *delete)

    def setup_world(self) -> None:
        """The world namespace on a veth of the host: address .2 of --world4/--world6 (.1 on
        the host side), no other route in it (no default, none back to the containers' or raw
        ranges), an iperf3 and a tcpbench server. The host reaches it through the link's own
        routes, checked before any traffic."""
        self.world: dict[str, str] = {}
        self.world_host: dict[str, str] = {}
        quiet("ip", "netns", "del", WORLD_NS)
        quiet("ip", "link", "del", WORLD_LINK)
        self.stack.callback(quiet, "ip", "netns", "del", WORLD_NS)
        self.stack.callback(quiet, "ip", "link", "del", WORLD_LINK)
        run("ip", "netns", "add", WORLD_NS)
        peer = ("peer", "name", "eth0", "netns", WORLD_NS)
        run("ip", "link", "add", WORLD_LINK, "type", "veth", *peer)
        nsx = ("ip", "netns", "exec", WORLD_NS)
        for fam, net in (("v6", self.a.world6), ("v4", self.a.world4)):
            net = ipaddress.ip_network(net)
            nodad = ["nodad"] if fam == "v6" else []
            self.world_host[fam], self.world[fam] = str(net[1]), str(net[2])
            run("ip", "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", WORLD_LINK, *nodad)
            run(*nsx, "ip", "addr", "add", f"{net[2]}/{net.prefixlen}", "dev", "eth0", *nodad)
        run("ip", "link", "set", WORLD_LINK, "up")
        run(*nsx, "ip", "link", "set", "lo", "up")
        run(*nsx, "ip", "link", "set", "eth0", "up")
        for addr in self.world.values():
            dev = json.loads(run("ip", "-j", "route", "get", addr))[0].get("dev")
            if dev != WORLD_LINK:
                raise RuntimeError(f"the host routes the world's {addr} to {dev}, not {WORLD_LINK}")
        self._serve(list(nsx))
        srv = subprocess.Popen(
            [*nsx, "iperf3", "-s", "-p", str(PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers.append(srv)
        self.stack.callback(stop, srv)

    def setup_outbound(self) -> dict:
        """Clients towards the world: the bridge and the cilium client containers, and raw: a
        namespace routed through the host to exactly the world's addresses, masqueraded by one
        rule per family as Docker's bridge is (`-s subnet ! -o link -j MASQUERADE`). Returns
        the notes for the report."""
        quiet("ip", "netns", "del", OUT_NS)
        quiet("ip", "link", "del", OUT_LINK)
        self.stack.callback(quiet, "ip", "netns", "del", OUT_NS)
        self.stack.callback(quiet, "ip", "link", "del", OUT_LINK)
        run("ip", "netns", "add", OUT_NS)
        run("ip", "link", "add", OUT_LINK, "type", "veth", "peer", "name", "eth0", "netns", OUT_NS)
        nsx = ("ip", "netns", "exec", OUT_NS)
        run(*nsx, "ip", "link", "set", "lo", "up")
        run(*nsx, "ip", "link", "set", "eth0", "up")
        run("ip", "link", "set", OUT_LINK, "up")
        # The last-but-one subnets of the test ranges (the bridge network has the last ones).
        subnets = {
            "v6": list(self.range6.subnets(new_prefix=64))[-2],
            "v4": list(self.range4.subnets(new_prefix=24))[-2],
        }
        for fam, net in subnets.items():
            tool = "ip6tables" if fam == "v6" else "iptables"
            nodad = ["nodad"] if fam == "v6" else []
            run("ip", "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", OUT_LINK, *nodad)
            run(*nsx, "ip", "addr", "add", f"{net[2]}/{net.prefixlen}", "dev", "eth0", *nodad)
            world = self.a.world6 if fam == "v6" else self.a.world4
            run(*nsx, "ip", "route", "add", world, "via", str(net[1]))
            comment = ("-m", "comment", "--comment", OUT_COMMENT)
            masq = ["-s", str(net), "!", "-o", OUT_LINK, *comment, "-j", "MASQUERADE"]
            self._rule(tool, "nat", "-A", "POSTROUTING", *masq)
            # Docker's FORWARD policy is DROP for IPv4.
            out = ["-i", OUT_LINK, "-o", WORLD_LINK, *comment, "-j", "ACCEPT"]
            self._rule(tool, "filter", "-I", "FORWARD", *out)
            back = ["-i", WORLD_LINK, "-o", OUT_LINK, "-m", "conntrack", "--ctstate"]
            back += ["RELATED,ESTABLISHED", *comment, "-j", "ACCEPT"]
            self._rule(tool, "filter", "-I", "FORWARD", *back)
        to_world = {**self.world, "port": PORT, "tport": TPORT}
        self.clients["out-raw"] = {"ns": list(nsx), **to_world}
        self.clients["out-br"] = {"ns": self._netns("pcb-bench-br-cli"), **to_world}
        self.clients["out-cil"] = {"ns": self._netns("pcb-bench-cil-cli"), **to_world}
        # Docker masquerades a bridge network's IPv6 only with ip6tables on (daemon.json;
        # the default from Docker 27): without, the world cannot answer its containers.
        nat6 = run("ip6tables", "-w", "5", "-t", "nat", "-S", "POSTROUTING", check=False)
        masq6 = any(f"-s {self.br6} " in ln and "MASQUERADE" in ln for ln in nat6.splitlines())
        return {"bridge_v6_masqueraded": masq6}

    def setup_published(self) -> dict:
        """An iperf3 and a tcpbench server in a container on each network, published
        (`docker run -p`) on the world link's host addresses; the world is the client."""
        notes = {}
        for variant, net in (("pub-cil", NETWORK_CIL), ("pub-br", NETWORK_BR)):
            name = f"pcb-bench-{variant}"
            ports = PUBLISH[variant]
            opts = []
            for fam in self.a.families:
                host = self.world_host[fam]
                host = f"[{host}]" if fam == "v6" else host
                for hp, cp in zip(ports, (PORT, TPORT), strict=True):
                    opts += ["-p", f"{host}:{hp}:{cp}"]
            self._container(name, net, {}, ["iperf3", "-s", "-p", str(PORT)], tuple(opts))
            self._serve(self._netns(name))
            self.clients[variant] = {
                "ns": ["ip", "netns", "exec", WORLD_NS],
                **self.world_host,
                "port": ports[0],
                "tport": ports[1],
            }
        # Without ip6tables Docker serves a bridge port's IPv6 with docker-proxy (user space).
        nat6 = run("ip6tables", "-w", "5", "-t", "nat", "-S", check=False)
        dport = f"--dport {PUBLISH['pub-br'][0]} "
        notes["bridge_v6_dnat"] = any(dport in ln and "DNAT" in ln for ln in nat6.splitlines())
        return notes

    # -- measurements --

    def tcpbench(self, variant: str, fam: str, mode: str) -> float:
        c = self.clients[variant]
        secs = self.a.rr_duration
        port = str(c.get("tport", TPORT))
        cmd = [*c["ns"], str(self.tcpbench_exe), mode, c[fam], port, str(secs)]
        last = ""
        for _ in range(5):  # the server may still be starting
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, timeout=secs + 30
            )
            if proc.returncode == 0:
                return float(proc.stdout.split()[2])
            last = proc.stderr.strip()[-300:]
            time.sleep(1)
        raise RuntimeError(f"tcpbench {mode} {variant} {fam} failed: {last}")

    def interleaved(
        self, tests: tuple[str, ...], variants: list[str], measure, skip: frozenset = frozenset()
    ) -> dict:
        """samples[test][fam][variant]: one run of every variant per round, the order
        reversed every other round; none of the (variant, fam) pairs in skip."""
        samples = {
            t: {f: {v: [] for v in variants if (v, f) not in skip} for f in self.a.families}
            for t in tests
        }
        for r in range(self.a.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for t in tests:
                for fam in self.a.families:
                    for v in order:
                        if (v, fam) in skip:
                            continue
                        x = measure(v, fam, t)
                        samples[t][fam][v].append(x)
                        log(
                            f"round {r + 1}/{self.a.rounds} {t:6} {fam} {label(v, fam):22} "
                            f"{x:10.2f} {UNITS[t]}"
                        )
        return samples

    def pair_variants(self) -> list[str]:
        """throughput's and rr's paths, raw first (the tables' reference)."""
        variants = ["raw", RAW_NAT, "bridge"] + [f"ipt-{n}" for n in self.a.rules]
        return variants + [f"cil-{n}" for n in self.a.rules]

    def rr(self) -> dict:
        variants = self.pair_variants()
        return self.interleaved(RR_TESTS, variants, lambda v, f, t: self.tcpbench(v, f, t))

    def service(self) -> dict:
        def measure(v, f, t):
            return self.tcpbench(v, f, t)

        vips = [f"vip-{k}" for k in self.a.backends]
        samples = self.interleaved(("stream", "rr"), ["direct", *vips], measure)
        spread = [v for k in self.a.backends for v in (f"rot-{k}", f"vip-{k}")]
        samples.update(self.interleaved(("crr",), ["direct", *spread], measure))
        return {t: samples[t] for t in SERVICE_TESTS}

    def iperf(self, variant: str, fam: str) -> float:
        if variant in self.pairs:
            p = self.pairs[variant]
            cmd = ["ip", "netns", "exec", p["a"], "iperf3", "-c", p[f"{fam}b"]]
        else:
            c = self.cpair[variant]
            cmd = [DOCKER, "exec", c["cli"], "iperf3", "-c", c[fam]]
        return self._iperf3([*cmd, "-p", str(PORT)], variant, fam)

    def stream(self, variant: str, fam: str) -> float:
        """iperf3 from the host's binary in the client's namespace (outbound, published)."""
        c = self.clients[variant]
        cmd = [*c["ns"], "iperf3", "-c", c[fam], "-p", str(c["port"])]
        return self._iperf3(cmd, variant, fam)

    def _iperf3(self, cmd: list[str], variant: str, fam: str) -> float:
        cmd = [*cmd, "-t", str(self.a.duration), "-J", "--connect-timeout", "3000"]
        last = ""
        for _ in range(5):  # the server may still be starting
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, timeout=self.a.duration + 30
            )
            res = json.loads(proc.stdout or "{}") if proc.stdout.startswith("{") else {}
            if proc.returncode == 0 and "sum_received" in res.get("end", {}):
                return res["end"]["sum_received"]["bits_per_second"] / 1e9
            last = res.get("error") or proc.stdout[-300:] + proc.stderr[-300:]
            time.sleep(1)
        raise RuntimeError(f"iperf3 {variant} {fam} failed: {last}")

    def throughput(self) -> dict:
        variants = self.pair_variants()
        return self.interleaved(("stream",), variants, lambda v, f, _t: self.iperf(v, f))["stream"]

    def edge(self, variants: list[str], skip: frozenset = frozenset()) -> dict:
        """outbound and published: iperf3 stream and tcpbench crr."""

        def measure(v, f, t):
            return self.stream(v, f) if t == "stream" else self.tcpbench(v, f, t)

        return self.interleaved(EDGE_TESTS, variants, measure, skip)

    def flows(self) -> dict:
        """The cost of flow records: the same pycilium pair (its policy loaded) with the
        datapath's flow events on and off, toggled in the driver's pinned config map between
        runs; the driver's flow log reads whatever comes. Restored to on afterwards."""
        n = 10000 if 10000 in self.a.rules else max(self.a.rules)

        def measure(v, f, t):
            set_flow_events(self.a.pin_dir, v == "flows-on")
            if t == "stream":
                return self.iperf(f"cil-{n}", f)
            return self.tcpbench(f"cil-{n}", f, t)

        try:
            return self.interleaved(FLOW_TESTS, ["flows-on", "flows-off"], measure)
        finally:
            set_flow_events(self.a.pin_dir, True)

    def lifecycle(self) -> dict:
        def docker_run(net: str) -> float:
            t0 = time.monotonic()
            run(DOCKER, "run", "--rm", "--net", net, self.a.lifecycle_image, "true")
            return time.monotonic() - t0

        # Warm-up (not counted): the first endpoint after a policy change may still compile.
        docker_run(NETWORK_CIL)
        docker_run(NETWORK_BR)
        out: dict = {"cilium": [], "bridge": [], "maps_before": map_entries()}
        before, calls0 = compile_count(), call_totals()
        for r in range(self.a.lifecycle_rounds):
            order = ("cilium", "bridge") if r % 2 == 0 else ("bridge", "cilium")
            for which in order:
                out[which].append(docker_run(NETWORK_CIL if which == "cilium" else NETWORK_BR))
            log(
                f"lifecycle pair {r + 1}/{self.a.lifecycle_rounds}: cilium "
                f"{out['cilium'][-1]:.2f} s, bridge {out['bridge'][-1]:.2f} s"
            )
        after, calls1 = compile_count(), call_totals()
        out["call_mean_seconds"] = {
            c: (calls1[c][0] - calls0[c][0]) / max(calls1[c][1] - calls0[c][1], 1)
            for c in LIFECYCLE_CALLS
        }
        out["bpf_compiles"] = {
            "before": before,
            "after": after,
            "delta": after - before,
            "per_endpoint": (after - before) / self.a.lifecycle_rounds,
        }
        return out


# --- reporting ------------------------------------------------------------------------------


EDGE_LABELS = {
    RAW_NAT: "raw + Docker's DNS NAT",
    "out-raw": "raw",
    "out-br": "bridge",
    "out-cil": "pycilium",
    "pub-br": "bridge",
    "pub-cil": "pycilium",
    "plain4": "pycilium, plain IPv4",
    "nat64": "pycilium, NAT64 from IPv6",
    "flows-on": "pycilium, flow records on",
    "flows-off": "pycilium, flow records off",
}


def label(variant: str, fam: str) -> str:
    if variant in EDGE_LABELS:
        return EDGE_LABELS[variant]
    if variant.startswith("ipt-"):
        return ("ip6tables-" if fam == "v6" else "iptables-") + variant[4:]
    if variant.startswith("cil-"):
        return "pycilium-" + variant[4:]
    if variant.startswith("vip-"):
        return f"VIP, {variant[4:]} backends"
    if variant == "direct":
        return "direct to a backend"
    if variant.startswith("rot-"):
        return f"direct, {variant[4:]} backends in turn"
    return variant


def dns_nat_rules(text: str) -> list[str]:
    """The rules of an iptables-save/-restore text, the embedded DNS server's ports (random
    per container) replaced by PORT."""
    return [
        re.sub(r"(127\.0\.0\.11:|--sport )\d+", r"\1PORT", line)
        for line in text.splitlines()
        if line.startswith("-A ")
    ]


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def paired(xs: list[float], ys: list[float]) -> dict:
    """Per-round ratios x/y: the runs of one round share whatever else loads the machine."""
    return stats([x / y for x, y in zip(xs, ys, strict=True)])


def set_flow_events(pin_dir: str, enabled: bool) -> None:
    """Flip CONFIG_FLOW_EVENTS in the driver's one-slot config map, keeping the other bits."""
    path = f"{pin_dir}/config"
    found = json.loads(run("bpftool", "-j", "map", "lookup", "pinned", path, "key", *"0000"))
    flags = int.from_bytes(bytes(int(b, 16) for b in found["value"][:4]), "little")
    flags = flags | CONFIG_FLOW_EVENTS if enabled else flags & ~CONFIG_FLOW_EVENTS
    run(
        "bpftool",
        "map",
        "update",
        "pinned",
        path,
        "key",
        *"0000",
        "value",
        *(str(b) for b in flags.to_bytes(4, "little")),
    )


def flow_rate_limit(pin_dir: str) -> int:
    """The driver's --flow-rate-limit, from its pinned flow_limit map (lib/flowlog.h):
    flow events a second per CPU, 0 for none."""
    path = f"{pin_dir}/flow_limit"
    found = json.loads(run("bpftool", "-j", "map", "lookup", "pinned", path, "key", *"0000"))
    cost_ns = int.from_bytes(bytes(int(b, 16) for b in found["value"][:8]), "little")
    return round(1e9 / cost_ns) if cost_ns else 0


def summarize(samples: dict, ref: str) -> dict:
    """samples[fam][variant] -> summary[fam][variant] with the ratio to `ref`."""
    return {
        fam: {
            v: {"label": label(v, fam), "value": stats(xs), "ratio": paired(xs, per[ref])}
            for v, xs in per.items()
        }
        for fam, per in samples.items()
    }


def targets(result: dict) -> list[dict]:
    """Issue 17's targets and the earlier issues' that it does not replace, each as the median
    per-round ratio (min-max), whether the median meets it and whether it is a stretch goal.
    Replaced, so not repeated: rr and crr at 0.95 of raw (issue 6; now 0.95 of raw + DNS NAT
    and 1.0 of the bridge, stretch 1.05 of raw), VIP crr at 0.9 of one backend directly (now
    0.95 of the K backends directly), docker run at 1.2 x the bridge (now 1.1)."""
    rules = result["args"]["rules"]
    n = 10000 if 10000 in rules else max(rules)
    out = []

    def add(what: str, issue: str, r: dict, ok: bool, stretch: bool = False) -> None:
        out.append({"target": what, "issue": issue, "ratio": r, "met": ok, "stretch": stretch})

    def at_least(what: str, issue: str, x: list, y: list, bound: float, ref: str) -> None:
        r = paired(x, y)
        stretch = what.startswith("stretch: ")
        add(f"{what} >= {bound} x {ref}", issue, r, r["median"] >= bound, stretch)

    cil = f"cil-{n}"
    tp = result.get("throughput", {}).get("samples")
    for fam, per in (tp or {}).items():
        name, bridge = f"IPv{fam[1]} stream, pycilium-{n}", f"bridge (IPv{fam[1]})"
        at_least(name, "6, 17", per[cil], per["raw"], 0.95, "raw")
        at_least(name, "6, 17", per[cil], per["bridge"], 1.0, bridge)
        if n:
            at_least(name, "6", per[cil], per[f"ipt-{n}"], 10, label(f"ipt-{n}", fam))
    for t, per_fam in result.get("rr", {}).get("samples", {}).items():
        for fam, per in per_fam.items():
            name, bridge = f"IPv{fam[1]} {t}, pycilium-{n}", f"bridge (IPv{fam[1]})"
            if RAW_NAT in per:
                at_least(name, "17", per[cil], per[RAW_NAT], 0.95, label(RAW_NAT, fam))
            at_least(name, "17", per[cil], per["bridge"], 1.0, bridge)
            at_least(f"stretch: {name}", "17", per[cil], per["raw"], 1.05, "raw")
    for t, per_fam in result.get("service", {}).get("samples", {}).items():
        for fam, per in per_fam.items():
            for v in per:
                if not v.startswith("vip-"):
                    continue
                k = v.removeprefix("vip-")
                name = f"IPv{fam[1]} {t} through a VIP, {k} backends"
                if t == "stream":
                    at_least(name, "6", per[v], per["direct"], 0.9, "one backend directly")
                elif t == "crr" and f"rot-{k}" in per:
                    ref = f"the {k} backends directly in turn"
                    at_least(name, "17", per[v], per[f"rot-{k}"], 0.95, ref)
    if "prefilter" in result:
        for what, values, ok in xdpbench.targets(result["prefilter"]):
            add(what, "15", stats(values), ok)
    lc = result.get("lifecycle")
    if lc:
        r = paired(lc["cilium"], lc["bridge"])
        add("docker run --rm on cilium <= 1.1 x bridge", "17", r, r["median"] <= 1.1)
        c = lc["bpf_compiles"]["per_endpoint"]
        add("BPF compiles per endpoint after warm-up = 0", "6", stats([c]), c == 0)
    for t, per_fam in result.get("flows", {}).get("samples", {}).items():
        for fam, per in per_fam.items():
            name = f"IPv{fam[1]} {t} with flow records"
            at_least(name, "16", per["flows-on"], per["flows-off"], 0.97, "without")
    for per in result.get("nat64", {}).get("samples", {}).values():
        at_least("NAT64 stream", "15", per["nat64"], per["plain4"], 0.8, "plain IPv4")
    return out


# The ratio table's columns: which reference a path is compared with (compare.pairs).
REFERENCE_COLUMNS = (
    ("raw", "raw"),
    (RAW_NAT, "raw + DNS NAT"),
    ("bridge", "bridge"),
    ("ipt-", "ip(6)tables, same N"),
    ("direct", "one backend directly"),
    ("rot-", "the K backends directly"),
)


def ratio_table(result: dict) -> list[str]:
    """One row per measured path of throughput, rr and service (and docker run), one column
    per reference: median per-round ratio (min-max), empty where the pair is not compared."""
    keys = [k for k, _ in REFERENCE_COLUMNS]

    def column(ref: str) -> int:
        return keys.index(ref if ref in keys else ref.split("-")[0] + "-")

    groups = []
    if "throughput" in result:
        groups.append(("stream", result["throughput"]["samples"]))
    for scenario in ("rr", "service"):
        for t, per_fam in result.get(scenario, {}).get("samples", {}).items():
            groups.append((f"{t} (VIP)" if scenario == "service" else t, per_fam))
    head = " | ".join(f"/ {name}" for _, name in REFERENCE_COLUMNS)
    lines = [f"| measure | family | path | {head} |", "|---|---|---|" + "---|" * len(keys)]
    for what, per_fam in groups:
        for fam, per in per_fam.items():
            rows: dict[str, list[str]] = {}
            for path, ref in pairs(list(per)):
                q = paired(per[path], per[ref])
                cells = rows.setdefault(path, [""] * len(keys))
                cells[column(ref)] = f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})"
            for path, cells in rows.items():
                lines.append(f"| {what} | IPv{fam[1]} | {label(path, fam)} | {' | '.join(cells)} |")
    lc = result.get("lifecycle")
    if lc:
        q = paired(lc["cilium"], lc["bridge"])
        cells = [""] * len(keys)
        cells[column("bridge")] = f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})"
        lines.append(f"| docker run --rm, seconds | both | cilium | {' | '.join(cells)} |")
    return lines if len(lines) > 2 else []


def _table(summary: dict, unit: str, ref: str) -> list[str]:
    fmt = "{:.2f}" if unit == "Gbit/s" else "{:.0f}"
    lines = [
        f"| family | path | {unit} median | min | max | ratio to {ref} median (min-max) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for fam, per in summary.items():
        for s in per.values():
            g, q = s["value"], s["ratio"]
            lines.append(
                f"| IPv{fam[1]} | {s['label']} | {fmt.format(g['median'])} | "
                f"{fmt.format(g['min'])} | {fmt.format(g['max'])} | "
                f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}) |"
            )
    return lines


def _ratio_lines(samples: dict, x: str, y: str) -> list[str]:
    """x / y per family, for the families that have both."""
    return [
        f"IPv{fam[1]} {label(x, fam)} / {label(y, fam)}: {q['median']:.2f} "
        f"({q['min']:.2f}-{q['max']:.2f})"
        for fam, per in samples.items()
        if x in per and y in per
        for q in [paired(per[x], per[y])]
    ]


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        f"# pycilium benchmark, {result['date']}",
        "",
        f"Host: {result['host']['kernel']}, {result['host']['cpus']} CPUs, commit "
        f"{result['host']['commit'][:12]}. `{result['command']}`, {result['seconds']} s. "
        f"{a['rounds']} interleaved rounds; median (min-max); ratio = median of the per-round "
        "ratios run / reference run of the same round.",
    ]
    tp = result.get("throughput")
    if tp:
        lines += [
            "",
            f"## Throughput: iperf3 TCP, one stream, {a['duration']} s per run",
            "",
            *_table(tp["summary"], "Gbit/s", "raw"),
        ]
    rr = result.get("rr")
    if rr:
        lines += [
            "",
            f"## Request/response (tcpbench rr: 1-byte request and answer on one connection) "
            f"and connection rate (crr: connect, 1-byte request/response, close), "
            f"{a['rr_duration']} s per run",
        ]
        for t in RR_TESTS:
            lines += ["", f"### {t}", "", *_table(rr["summary"][t], UNITS[t], "raw")]
    fl = result.get("flows")
    if fl:
        lines += [
            "",
            "## Flow records (issue 16): the same pycilium pair, flow events on and off",
            "",
            "Flow events on: "
            + (
                f"at most {fl['rate_limit']} a second per CPU, the new connections beyond "
                "counted in the kernel (the driver's --flow-rate-limit)."
                if fl.get("rate_limit")
                else "one per new connection (no --flow-rate-limit)."
            ),
        ]
        for t in fl["summary"]:
            lines += ["", f"### {t}", "", *_table(fl["summary"][t], UNITS[t], "flows-off")]
    svc = result.get("service")
    if svc:
        lines += [
            "",
            f"## Service VIP: the pycilium client to a VIP with K backends (hash-picked per "
            f"connection) against the same client to one backend directly, "
            f"{a['rr_duration']} s per run; crr also directly to the K backends in turn",
        ]
        for t in SERVICE_TESTS:
            lines += ["", f"### {t}", "", *_table(svc["summary"][t], UNITS[t], "direct")]
    lc = result.get("lifecycle")
    if lc:
        c, b = stats(lc["cilium"]), stats(lc["bridge"])
        q = paired(lc["cilium"], lc["bridge"])
        bc = lc["bpf_compiles"]
        lines += [
            "",
            f"## Endpoint lifecycle: `docker run --rm --net X {a['lifecycle_image']} true`, X a "
            "cilium or a user-defined bridge network, "
            f"{len(lc['cilium'])} interleaved pairs after one warm-up pair (seconds)",
            "",
            "| network | median | min | max |",
            "|---|---:|---:|---:|",
            f"| cilium | {c['median']:.2f} | {c['min']:.2f} | {c['max']:.2f} |",
            f"| bridge | {b['median']:.2f} | {b['min']:.2f} | {b['max']:.2f} |",
            "",
            f"cilium / bridge: {q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}); BPF compiles "
            f"({COMPILE_METRIC}) {bc['before']:.0f} -> {bc['after']:.0f}: "
            f"{bc['per_endpoint']:.2f} per endpoint. Mean plugin call time meanwhile: "
            + ", ".join(f"{c} {t * 1000:.0f} ms" for c, t in lc["call_mean_seconds"].items())
            + f"; datapath map entries at the start: {lc['maps_before']} (deleting an endpoint "
            "walks them).",
        ]
    out = result.get("outbound")
    if out:
        lines += [
            "",
            f"## Outbound: a client to a server in the world namespace beyond the host, "
            f"masqueraded; iperf3 {a['duration']} s, tcpbench crr {a['rr_duration']} s per run",
        ]
        for t in EDGE_TESTS:
            lines += ["", f"### {t}", "", *_table(out["summary"][t], UNITS[t], "raw")]
            lines += ["", *_ratio_lines(out["samples"][t], "out-cil", "out-br")]
        if "v6" in a["families"] and not out["notes"]["bridge_v6_masqueraded"]:
            lines += [
                "",
                "No IPv6 row for the bridge: this Docker does not masquerade a bridge "
                "network's IPv6 (ip6tables is off in its daemon.json, the default before "
                "Docker 27), so the world could not answer its containers.",
            ]
    pub = result.get("published")
    if pub:
        lines += [
            "",
            f"## Published port: the world to `docker run -p` on the host's address on the "
            f"world link; iperf3 {a['duration']} s, tcpbench crr {a['rr_duration']} s per run",
        ]
        for t in EDGE_TESTS:
            lines += ["", f"### {t}", "", *_table(pub["summary"][t], UNITS[t], "bridge")]
        if "v6" in a["families"] and not pub["notes"]["bridge_v6_dnat"]:
            lines += [
                "",
                "The bridge's IPv6 port is docker-proxy's (user space, to the container's "
                "IPv4): this Docker has no ip6tables NAT (daemon.json).",
            ]
    n64 = result.get("nat64")
    if n64:
        lines += [
            "",
            f"## NAT64: iperf3 {a['duration']} s per run from an IPv6-only endpoint to the world's "
            "IPv4 address as 64:ff9b::a.b.c.d (translated in BPF, masqueraded) against an "
            "ordinary endpoint to the same address over IPv4 (masqueraded)",
            "",
            *_table(n64["summary"], "Gbit/s", "plain IPv4"),
        ]
    if "prefilter" in result:
        lines += xdpbench.markdown(result["prefilter"], a["rounds"], a["duration"])
    pi = result["meta"].get("policy_import")
    if pi:
        lines += [
            "",
            f"Policy import: {pi['rules']} rules in {pi['seconds']} s "
            f"({pi['bpf_compiles']:.0f} BPF compiles); policy map entries per server: "
            f"{result['meta'].get('policy_map_entries')}.",
        ]
    table = ratio_table(result)
    if table:
        lines += [
            "",
            "## Ratios (issue 17): every measured path against every reference",
            "",
            "Median of the per-round ratios (min-max); raw + DNS NAT is raw with Docker's "
            "embedded-DNS NAT rules in both namespaces (bench/docker-dns-nat.rules, IPv4 only "
            "as Docker's); N is the path's own rule count, K its own backend count."
            + (
                ""
                if result.get("meta", {}).get("dns_nat_as_docker", True)
                else " This Docker's rules differ from that file (the run's log says how)."
            ),
            "",
            *table,
        ]
    tg = result.get("targets")
    if tg:
        lines += ["", "## Targets (issue 17, and those of issues 6, 15, 16 it does not replace)"]
        lines += ["", "| target | issue | ratio median (min-max) | met |", "|---|---|---|---|"]
        for t in tg:
            r = t["ratio"]
            met = "yes" if t["met"] else ("no (stretch)" if t.get("stretch") else "**no**")
            lines.append(
                f"| {t['target']} | {t.get('issue', '')} | "
                f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | {met} |"
            )
    lines += ["", f"bench/run.py took {result['seconds']:.0f} s of wall time."]
    return "\n".join(lines) + "\n"


def _vs_rules(ax, per: dict, rules: list[int], fam: str, unit: str, title: str) -> None:
    for prefix, name in (("cil", "pycilium"), ("ipt", "ip6tables" if fam == "v6" else "iptables")):
        vals = [per[f"{prefix}-{n}"]["value"] for n in rules]
        med = [v["median"] for v in vals]
        err = [[v["median"] - v["min"] for v in vals], [v["max"] - v["median"] for v in vals]]
        ax.errorbar(rules, med, yerr=err, marker="o", capsize=3, label=f"{name}-N")
    for v, style in (("raw", "--"), (RAW_NAT, "-."), ("bridge", ":")):
        if v in per:
            ax.axhline(
                per[v]["value"]["median"], linestyle=style, color="grey", label=per[v]["label"]
            )
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(-20, max(rules) * 1.5)
    ax.set_xlabel("rules N")
    ax.set_ylabel(f"{unit} (median, min-max)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize="small")


def plot(result: dict, outdir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (pip install '.[bench]'): no plots")
        return []
    rules = result["args"]["rules"]
    figures = []
    if "throughput" in result:
        summary = result["throughput"]["summary"]
        figures.append(
            (
                "throughput-vs-rules.png",
                [[(summary[f], f, "Gbit/s", f"IPv{f[1]} TCP, 1 stream") for f in summary]],
            )
        )
    if "rr" in result:
        summary = result["rr"]["summary"]
        figures.append(
            (
                "rr-vs-rules.png",
                [
                    [(summary[t][f], f, UNITS[t], f"IPv{f[1]} {t}") for f in summary[t]]
                    for t in RR_TESTS
                ],
            )
        )
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, grid in figures:
        rows, cols = len(grid), len(grid[0])
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
        for r, row in enumerate(grid):
            for c, (per, fam, unit, title) in enumerate(row):
                _vs_rules(axes[r][c], per, rules, fam, unit, title)
        fig.suptitle(f"pycilium bench {result['date']}", fontsize="small")
        fig.tight_layout()
        path = outdir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


# --- main ---------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Quick check: --scenarios rr --rules 0,10000 --rounds 1 --rr-duration 1",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"which to run, comma-separated ({','.join(SCENARIOS)})",
    )
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run (3)")
    p.add_argument(
        "--rr-duration", type=float, default=2, help="seconds per tcpbench run: rr, crr, VIP (2)"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    # 1000 is left out by default to keep `make bench` under 25 minutes (docs/benchmarks.md).
    p.add_argument("--rules", default="0,10000", help="rule counts N (0,10000)")
    p.add_argument("--families", default="v6,v4", help="v6,v4")
    p.add_argument("--backends", default="2,16", help="service backend counts (2,16)")
    p.add_argument("--lifecycle-rounds", type=int, default=20, help="docker run pairs (20)")
    p.add_argument("--image", default=os.environ.get("BENCH_IMAGE", "pycilium/bench-iperf3:latest"))
    p.add_argument("--lifecycle-image", default=os.environ.get("IMAGE", "pycilium/busybox:latest"))
    p.add_argument("--range6", default="fdbe:7c00:ba5e::/48", help="raw namespaces' IPv6 range")
    p.add_argument("--range4", default="198.18.0.0/15", help="raw namespaces' IPv4 range")
    p.add_argument(
        "--world6", default="2001:db8:b0::/64", help="the world link (outbound, published)"
    )
    p.add_argument(
        "--world4",
        default="198.18.0.0/25",
        help="the world link; the tests take the IPv4 documentation ranges, this host's LAN "
        "may be 192.0.2.0/24",
    )
    p.add_argument(
        "--vip6", default="fd00:5::be00", help="VIP base, inside the driver's service range6"
    )
    p.add_argument(
        "--vip4", default="10.96.190.0", help="VIP base, inside the driver's service range4"
    )
    p.add_argument(
        "--pin-dir", default="/sys/fs/bpf/pycilium", help="the driver's --bpf-pin-dir (flows)"
    )
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--plots", default=str(REPO / "docs" / "benchmarks"))
    p.add_argument("--build", default=str(REPO / "build" / "bench"), help="where tcpbench is built")
    a = p.parse_args(argv)
    a.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    a.rules = _ints(a.rules)
    a.backends = _ints(a.backends)
    a.families = [f.strip() for f in a.families.split(",") if f.strip()]
    if not a.scenarios or not set(a.scenarios) <= set(SCENARIOS):
        p.error(f"--scenarios: some of {','.join(SCENARIOS)}")
    if any(n > 50000 or n < 0 for n in a.rules) or not a.rules:
        p.error("--rules: counts between 0 and 50000")
    if not a.backends or any(k < 1 or k > 64 for k in a.backends):
        p.error("--backends: counts between 1 and 64")
    if not set(a.families) <= {"v6", "v4"} or not a.families:
        p.error("--families: v6 and/or v4")
    for fam, net in (("v6", a.world6), ("v4", a.world4)):
        try:
            n = ipaddress.ip_network(net)
        except ValueError as exc:
            p.error(f"--world{fam[1]}: {exc}")
        if n.version != int(fam[1]) or n.num_addresses < 4:
            p.error(f"--world{fam[1]}: an IPv{fam[1]} network with room for two hosts")
    if a.rounds < 1 or a.duration < 1 or a.rr_duration <= 0 or a.lifecycle_rounds < 1:
        p.error("--rounds, --duration, --rr-duration and --lifecycle-rounds must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: ERROR: must run as root")
    # nat64 brings a datapath of its own; every other scenario uses the driver.
    if set(a.scenarios) - {"nat64"}:
        require_driver()
    edge = {"outbound", "published", "nat64"} & set(a.scenarios)
    nets = [ipaddress.ip_network(a.range6), ipaddress.ip_network(a.range4)]
    if edge:
        # A killed run's links: their routes would be refused as overlapping.
        quiet("ip", "link", "del", WORLD_LINK)
        quiet("ip", "netns", "del", OUT_NS)
        quiet("ip", "link", "del", OUT_LINK)
        nets += [ipaddress.ip_network(a.world6), ipaddress.ip_network(a.world4)]
    check_ranges(nets)
    for tool in ("iperf3", "ip6tables-restore", "iptables-restore", "gcc", "nsenter"):
        run("sh", "-c", f"command -v {tool}")
    containers = bool(set(a.scenarios) - set(HOST_SCENARIOS))
    if containers:
        run(DOCKER, "image", "inspect", a.image)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    now = dt.datetime.now(dt.UTC)
    result: dict = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]).strip(),
        "args": {k: v for k, v in vars(a).items() if k not in ("results", "plots", "build")},
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "iperf3": run("iperf3", "--version").splitlines()[0],
            "commit": run("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).strip(),
        },
    }
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        b = Bench(a, stack)
        log("setting up namespaces, ip(6)tables chains, networks, containers")
        pairs = bool(set(PAIR_SCENARIOS) & set(a.scenarios))
        if pairs:
            b.setup_raw()
        if containers:
            b.setup_docker(servers=pairs)
        if pairs:
            b.load_policy()
        if "throughput" in a.scenarios:
            samples = b.throughput()
            result["throughput"] = {"samples": samples, "summary": summarize(samples, "raw")}
        if "rr" in a.scenarios:
            samples = b.rr()
            result["rr"] = {
                "samples": samples,
                "summary": {t: summarize(samples[t], "raw") for t in samples},
            }
        if "service" in a.scenarios:
            b.setup_services()
            samples = b.service()
            result["service"] = {
                "samples": samples,
                "summary": {t: summarize(samples[t], "direct") for t in samples},
            }
        if "flows" in a.scenarios:
            samples = b.flows()
            result["flows"] = {
                "samples": samples,
                "summary": {t: summarize(samples[t], "flows-off") for t in samples},
                "rate_limit": flow_rate_limit(a.pin_dir),
            }
        if "lifecycle" in a.scenarios:
            result["lifecycle"] = b.lifecycle()
        if edge:
            b.setup_world()
        if "outbound" in a.scenarios:
            notes = b.setup_outbound()
            skip = frozenset() if notes["bridge_v6_masqueraded"] else frozenset({("out-br", "v6")})
            samples = b.edge(["out-raw", "out-br", "out-cil"], skip)
            result["outbound"] = {
                "samples": samples,
                "summary": {t: summarize(samples[t], "out-raw") for t in samples},
                "notes": notes,
            }
        if "published" in a.scenarios:
            notes = b.setup_published()
            samples = b.edge(["pub-br", "pub-cil"])
            result["published"] = {
                "samples": samples,
                "summary": {t: summarize(samples[t], "pub-br") for t in samples},
                "notes": notes,
            }
        if "nat64" in a.scenarios:
            b.clients.update(nat64.setup(stack, b.range6, b.range4, b.world["v4"], PORT, run))
            variants = list(nat64.VARIANTS)
            skip = frozenset((v, "v6") for v in variants)
            samples = b.interleaved(("stream",), variants, lambda v, f, _t: b.stream(v, f), skip)
            samples = {fam: per for fam, per in samples["stream"].items() if per}
            result["nat64"] = {"samples": samples, "summary": summarize(samples, "plain4")}
        if "prefilter" in a.scenarios:
            # The /24s at the end of range4: -1 the bridge, -2 the world, -3 nat64.
            net4 = list(ipaddress.ip_network(a.range4).subnets(new_prefix=24))[-4]
            exe = xdpbench.build(Path(a.build))
            pf = xdpbench.PrefilterBench(net4, exe, stack)
            pf.setup()
            result["prefilter"] = pf.run(a.rounds, a.duration, log)
        result["meta"] = b.meta
        log("cleaning up")
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["targets"] = targets(result)
    stem = now.strftime("%Y-%m-%dT%H%MZ")
    outdir = Path(a.results)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (outdir / f"{stem}.md").write_text(md)
    plots = plot(result, Path(a.plots))
    print(md)
    for path in [outdir / f"{stem}.json", outdir / f"{stem}.md", *plots]:
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
