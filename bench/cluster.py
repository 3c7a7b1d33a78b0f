"""Cluster scale benchmark (issue 14): N simulated nodes sharing one etcd, E endpoints.

Each node is a real driver process (bench/cluster_node.py: the `cilium-docker` service,
gunicorn and all, with --kvstore etcd) over an in-memory datapath stand-in that records
ipcache and policy writes with their time, and a stand-in for its dockerd
(bench/docker_stand_in.py) that makes the plugin calls `docker network create` and
`docker run` make and emits Docker's events, from which the driver learns each
container's labels as it does from a real dockerd.

  convergence  one network (created on node 1, replicated by the nodes through their
               Docker API), a rule that lets every benchmark endpoint reach every other,
               then E endpoints started round-robin over the nodes at --rate per second,
               each with labels of its own (its own identity): for each endpoint and each
               other node, the time from its Join until that node has its addresses in the
               ipcache with its identity and its identity in the policy of every local
               endpoint that existed at the Join. p50/p99 over all (endpoint, node) pairs.
  idle         etcd's requests over --idle seconds with nothing happening (its own
               /metrics: gRPC messages received, by method), lease keepalives apart.
  memory       VmRSS of every node's gunicorn master and worker.

Runs its own etcd on free loopback ports and everything under one temporary directory;
removes all of it on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import summary
from docker_stand_in import DockerStandIn

from driver.cli.client import ApiClient, ApiError

REPO = Path(__file__).resolve().parent.parent
ETCD = shutil.which("etcd")
NETWORK = "pcb-scale"
APP = "pcb-scale"
PLUGIN = "cilium"
RECORD = "datapath.jsonl"  # bench/cluster_node.py writes it in each node's state dir
KEEPALIVE = "LeaseKeepAlive"
PER_NODE = 60  # endpoints one node's /26 block of the network holds (gateway apart)


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return found


# --- etcd -----------------------------------------------------------------------------------


class Etcd:
    def __init__(self, workdir: Path):
        self.dir = workdir / "etcd"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.peer = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            ETCD,
            "--name=pcb-scale",
            f"--data-dir={self.dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer}",
            f"--initial-advertise-peer-urls={self.peer}",
            f"--initial-cluster=pcb-scale={self.peer}",
        ]
        with open(self.dir.parent / "etcd.log", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait(self._healthy, 30, "etcd answers /health")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"etcd exited ({self.process.returncode}): see etcd.log")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                return json.load(answer).get("health") == "true"
        except OSError:
            return False

    def requests(self) -> dict[str, float]:
        """gRPC method -> messages etcd received (every request, the v3 gateway's too, is
        one; a watch or keepalive stream counts each message it carries)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels, value = line[len("grpc_server_msg_received_total{") :].rsplit("} ", 1)
                pairs = dict(p.split("=", 1) for p in labels.split(","))
                method = pairs["grpc_method"].strip('"')
                found[method] = found.get(method, 0.0) + float(value)
        return found

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


# --- the nodes --------------------------------------------------------------------------------


class Node:
    def __init__(self, number: int, workdir: Path, etcd_url: str, a: argparse.Namespace):
        self.number = number
        self.name = f"pcb-node{number:02d}"
        self.dir = workdir / self.name
        self.state = self.dir / "state"
        self.state.mkdir(parents=True)
        self.api = ApiClient(str(self.dir / "api.sock"), timeout=120)
        self.docker = DockerStandIn(
            str(self.dir / "docker.sock"), str(self.dir / "plugins" / f"{PLUGIN}.sock"), PLUGIN
        )
        self.settings = {
            "plugin-name": PLUGIN,
            "plugin-dir": str(self.dir / "plugins"),
            "api-socket": str(self.dir / "api.sock"),
            "state-dir": str(self.state),
            "bpf-pin-dir": str(self.dir / "bpf"),
            "docker-host": f"unix://{self.dir / 'docker.sock'}",
            "kvstore": "etcd",
            "kvstore-endpoints": etcd_url,
            "node-name": self.name,
            # A loopback address of its own: nodes are told apart by address too.
            "node-address": f"127.0.1.{number}",
            # Each node a /20 of a /12 (the default /16 holds only 16 nodes): a network's
            # block on each node is a /26, room for PER_NODE endpoints.
            "node-range4": "10.208.0.0/12",
            "node-mask4": "20",
            "cluster-dns-port": "0",
            # No flow log: the stand-in datapath has no flows to read.
            "flow-buffer": "0",
            "log-level": "warning",
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.docker.start()
        command = [sys.executable, str(REPO / "bench" / "cluster_node.py")]
        for key, value in self.settings.items():
            command += [f"--{key}", value]
        with open(self.dir / "driver.log", "ab") as out:
            # A session of its own: the cleanup signals the node's processes, nothing else.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            tail = (self.dir / "driver.log").read_text()[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{tail}")
        try:
            self.api.get("/v1/healthz")
        except ApiError:
            return False
        return True

    def rss_kib(self) -> dict[str, int]:
        """VmRSS of the gunicorn master and its worker(s)."""
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        found = {}
        for pid in [master, *map(int, children)]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found["master" if pid == master else "worker"] = int(line.split()[1])
        return found

    def records(self) -> list[dict]:
        path = self.state / RECORD
        if not path.exists():
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.docker.close()


# --- analysis ---------------------------------------------------------------------------------


class Seen:
    """One node's datapath record, indexed: when each address got which identity in the
    ipcache, when each local endpoint first had a policy and each peer identity in it."""

    def __init__(self, records: list[dict]):
        self.ipcache: dict[tuple[str, int], float] = {}
        self.born: dict[str, float] = {}
        self.allowed: dict[tuple[str, int], float] = {}
        self.identity: dict[tuple[str, int], float] = {}
        for r in records:
            if "identity" in r:
                self.identity.setdefault((r["identity"], r["id"]), r["t"])
            elif "ipcache" in r:
                self.ipcache.setdefault((r["ipcache"], r["id"]), r["t"])
            elif "policy" in r:
                self.born.setdefault(r["policy"], r["t"])
                for identity in r["ids"]:
                    self.allowed.setdefault((r["policy"], identity), r["t"])

    def enforced(self, addresses: list[str], identity: int, since: float):
        """When this node enforced policy for a remote endpoint joined at `since`:
        (ipcache time, time of the last local endpoint's policy, how many local endpoints'
        policies had to allow it); None if not (yet)."""
        times = [self.ipcache.get((a, identity)) for a in addresses]
        if None in times:
            return None
        policy, checked = since, 0
        for ifname, born in self.born.items():
            if born < since:
                got = self.allowed.get((ifname, identity))
                if got is None:
                    return None
                policy, checked = max(policy, got), checked + 1
        return max(times), policy, checked


def pairs(nodes: list[Node], joined: list[dict]) -> tuple[list, list, list, int]:
    """Over every (endpoint, other node): seconds from the Join to enforced, and to the
    ipcache alone; per endpoint, to enforced on its last other node; pairs not enforced;
    local policies checked, pairs whose policy came after the ipcache, and the two stages:
    Join to the identity on the endpoint's own node, from there to enforced elsewhere."""
    seen = {node.name: Seen(node.records()) for node in nodes}
    total, ipcache_only, per_endpoint, missing = [], [], [], 0
    own, onward = [], []
    checked = policy_last = 0
    for ep in joined:
        worst = 0.0
        assigned = seen[ep["node"]].identity.get((ep["ifname"], ep["identity"]))
        if assigned is not None:
            own.append(assigned - ep["joined"])
        for name, s in seen.items():
            if name == ep["node"]:
                continue
            found = s.enforced(ep["addresses"], ep["identity"], ep["joined"])
            if found is None:
                missing += 1
                continue
            at_ipcache, at_policy, policies = found
            checked += policies
            policy_last += at_policy > at_ipcache
            total.append(max(at_ipcache, at_policy) - ep["joined"])
            ipcache_only.append(at_ipcache - ep["joined"])
            if assigned is not None:
                onward.append(max(at_ipcache, at_policy) - assigned)
            worst = max(worst, total[-1])
        per_endpoint.append(round(worst, 4))
    counts = {"policies_checked": checked, "pairs_policy_after_ipcache": policy_last}
    stages = {"own_identity_s": summary(own), "identity_to_enforced_s": summary(onward)}
    return total, ipcache_only, per_endpoint, missing, {**counts, **stages}


def convergence(nodes: list[Node], joined: list[dict]) -> dict:
    total, ipcache_only, per_endpoint, missing, counts = pairs(nodes, joined)
    return {
        "pairs": len(total),
        "missing_pairs": missing,
        **counts,
        "enforced_s": summary(total),
        "ipcache_s": summary(ipcache_only),
        "last_node_per_endpoint_s": summary(per_endpoint),
        "per_endpoint_last_node_s": per_endpoint,
    }


# --- the run ----------------------------------------------------------------------------------


def all_to_all_rule() -> list[dict]:
    return [
        {
            "endpointSelector": {"matchLabels": {"app": APP}},
            "labels": [{"key": "name", "value": "pcb-scale"}],
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": APP}}]}],
        }
    ]


def start_endpoints(nodes: list[Node], a: argparse.Namespace) -> list[dict]:
    """E `docker run`s round-robin over the nodes, --rate per second (a pool of --parallel
    at most at once): each endpoint's node, id and Join time."""
    started = time.monotonic()

    def one(i: int) -> dict:
        node = nodes[i % len(nodes)]
        labels = {"app": APP, "idx": str(i)}
        endpoint_id, joined = node.docker.run(f"pcb-scale-{i}", NETWORK, labels)
        return {"node": node.name, "endpoint_id": endpoint_id, "joined": joined}

    futures = []
    with ThreadPoolExecutor(a.parallel) as pool:
        for i in range(a.endpoints):
            delay = started + i / a.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
            if (i + 1) % 100 == 0:
                log(f"{i + 1}/{a.endpoints} endpoints started")
        return [f.result() for f in futures]


def identities_of(nodes: list[Node], joined: list[dict]) -> None:
    """Each endpoint's identity and addresses, from its node's `cilium endpoint list`,
    once every one has its identity."""
    by_node = {node.name: node for node in nodes}
    wanted = {}
    for ep in joined:
        wanted.setdefault(ep["node"], {})[ep["endpoint_id"]] = ep

    def all_ready() -> bool:
        for name, eps in wanted.items():
            listed = {e["endpoint_id"]: e for e in by_node[name].api.get("/v1/endpoints")}
            for endpoint_id, ep in eps.items():
                e = listed.get(endpoint_id)
                if e is None or e["state"] != "ready":
                    return False
                ep["identity"] = e["identity"]
                ep["addresses"] = [x for x in (e["ipv6"], e["ipv4"]) if x]
                ep["ifname"] = e["host_ifname"]
        return True

    wait(all_ready, 300, "every endpoint has its identity", interval=1)


def converged(nodes: list[Node], joined: list[dict]) -> bool:
    return pairs(nodes, joined)[3] == 0


def rates(before: dict, after: dict, seconds: float) -> dict:
    delta = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in after}
    keepalive = delta.pop(KEEPALIVE, 0.0)
    return {
        "seconds": seconds,
        "keepalive_per_s": round(keepalive / seconds, 3),
        "other_per_s": round(sum(delta.values()) / seconds, 3),
        "other_by_method": {m: int(v) for m, v in sorted(delta.items()) if v},
    }


def run(a: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> dict:
    etcd = Etcd(workdir)
    stack.callback(etcd.stop)
    etcd.start()
    nodes = [Node(k, workdir, etcd.url, a) for k in range(1, a.nodes + 1)]
    for node in nodes:
        stack.callback(node.stop)
    t0 = time.monotonic()
    for node in nodes:
        node.start()
    wait(lambda: all(node.ready() for node in nodes), 300, "every node answers", interval=0.5)
    started_s = time.monotonic() - t0
    log(f"{a.nodes} nodes up in {started_s:.1f} s")
    memory = {"started": {n.name: n.rss_kib() for n in nodes}}

    t0 = time.monotonic()
    nodes[0].docker.create_network(NETWORK, {"Driver": PLUGIN}, enable_ipv6=True)
    wait(lambda: all(n.docker.network_named(NETWORK) for n in nodes), 120, "network everywhere")
    network_s = time.monotonic() - t0
    nodes[0].api.request("PUT", "/v1/policy", {"text": json.dumps(all_to_all_rule())})
    revision = nodes[0].api.get("/v1/status")["policy"]["revision"]
    wait(
        lambda: all(n.api.get("/v1/status")["policy"]["revision"] >= revision for n in nodes),
        60,
        "the rule on every node",
    )
    log(f"network on every node in {network_s:.2f} s; the rule is in force everywhere")

    t0 = time.monotonic()
    joined = start_endpoints(nodes, a)
    start_s = time.monotonic() - t0
    identities_of(nodes, joined)
    wait(lambda: converged(nodes, joined), 300, "every node enforces every endpoint", 1)
    result = convergence(nodes, joined)
    log(f"converged: enforced {result['enforced_s']}")
    memory["endpoints"] = {n.name: n.rss_kib() for n in nodes}

    # At rest: a few seconds for stragglers (aliases, network users), then the window.
    time.sleep(3)
    before = etcd.requests()
    time.sleep(a.idle)
    idle = rates(before, etcd.requests(), a.idle)
    log(f"idle {a.idle} s: {idle}")
    return {
        "nodes_started_s": round(started_s, 2),
        "network_everywhere_s": round(network_s, 3),
        "endpoints_started_s": round(start_s, 2),
        "convergence": result,
        "idle": idle,
        "memory_kib": memory,
    }


def rss_table(memory: dict) -> list[dict]:
    rows = []
    for name in memory["endpoints"]:
        at = {k: sum(v[name].values()) for k, v in memory.items()}
        rows.append({"node": name, **{k: round(v / 1024, 1) for k, v in at.items()}})
    return rows


def markdown(r: dict) -> str:
    c, idle = r["cluster"]["convergence"], r["cluster"]["idle"]
    e, i, last = c["enforced_s"], c["ipcache_s"], c["last_node_per_endpoint_s"]
    o, w = c["own_identity_s"], c["identity_to_enforced_s"]
    rows = rss_table(r["cluster"]["memory_kib"])
    started = [x["started"] for x in rows]
    loaded = [x["endpoints"] for x in rows]
    a = r["args"]
    ms = 1000
    out = [
        f"# Cluster scale benchmark, {r['date']}",
        "",
        f"`{r['command']}`, commit `{r['host']['commit'][:12]}`, {r['host']['cpus']} CPUs, "
        f"kernel {r['host']['kernel']}. {a['nodes']} driver processes (datapath stand-in), "
        f"{a['endpoints']} endpoints started at {a['rate']}/s, one etcd.",
        "",
        "## From an endpoint's Join to policy enforced on the other nodes",
        "",
        "| measured | pairs | p50 | p99 | max |",
        "|---|---|---|---|---|",
        f"| ipcache has its addresses and identity | {i['n']} | {i['p50'] * ms:.0f} ms | "
        f"{i['p99'] * ms:.0f} ms | {i['max'] * ms:.0f} ms |",
        f"| and every local endpoint's policy allows it | {e['n']} | {e['p50'] * ms:.0f} ms"
        f" | {e['p99'] * ms:.0f} ms | {e['max'] * ms:.0f} ms |",
        f"| its identity on its own node (events watcher, etcd allocation) | {o['n']} | "
        f"{o['p50'] * ms:.0f} ms | {o['p99'] * ms:.0f} ms | {o['max'] * ms:.0f} ms |",
        f"| from there to enforced on another node | {w['n']} | {w['p50'] * ms:.0f} ms | "
        f"{w['p99'] * ms:.0f} ms | {w['max'] * ms:.0f} ms |",
        f"| the last other node, per endpoint | {last['n']} | {last['p50'] * ms:.0f} ms | "
        f"{last['p99'] * ms:.0f} ms | {last['max'] * ms:.0f} ms |",
        "",
        f"{c['policies_checked']} local endpoint policies had to allow a remote identity "
        f"(each endpoint that existed at the Join); in {c['pairs_policy_after_ipcache']} "
        "pairs the policy came after the ipcache.",
        "",
        f"Target (issue 14): p99 under 1 s. Nodes up in {r['cluster']['nodes_started_s']} s; "
        f"the network (created on node 1) on every node in "
        f"{r['cluster']['network_everywhere_s']} s; {a['endpoints']} `docker run`s took "
        f"{r['cluster']['endpoints_started_s']} s.",
        "",
        f"## etcd at rest ({idle['seconds']} s, nothing happening)",
        "",
        "| requests | per second |",
        "|---|---|",
        f"| lease keepalives ({a['nodes']} nodes) | {idle['keepalive_per_s']} |",
        f"| everything else | {idle['other_per_s']} |",
        "",
        "Everything else, by method: "
        + (", ".join(f"{m} {v}" for m, v in idle["other_by_method"].items()) or "none")
        + ".",
        "",
        "## Memory per node (VmRSS, gunicorn master + worker)",
        "",
        "| | min | median | max |",
        "|---|---|---|---|",
        f"| started | {min(started)} MiB | {round(statistics.median(started), 1)} MiB | "
        f"{max(started)} MiB |",
        f"| with {a['endpoints'] // a['nodes']} local and {a['endpoints']} cluster endpoints "
        f"| {min(loaded)} MiB | {round(statistics.median(loaded), 1)} MiB | {max(loaded)} MiB |",
        "",
    ]
    load = ", ".join(f"{x:.1f}" for x in r["host"]["loadavg_at_end"])
    out.append(f"Total {r['seconds']} s; load average at the end {load}.")
    return "\n".join(out) + "\n"


def plot(r: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (pip install '.[bench]'): no plot")
        return None
    c = r["cluster"]["convergence"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    last = c["per_endpoint_last_node_s"]
    left.plot(range(len(last)), [x * 1000 for x in last], ".", markersize=3)
    left.axhline(1000, color="red", linewidth=0.8, label="target p99 1 s")
    left.set_xlabel("endpoint, in start order")
    left.set_ylabel("Join -> enforced on the last other node (ms)")
    left.set_ylim(bottom=0)
    left.legend(fontsize="small")
    rows = rss_table(r["cluster"]["memory_kib"])
    xs = range(1, len(rows) + 1)
    right.set_xticks(list(xs))
    right.bar([x - 0.2 for x in xs], [x["started"] for x in rows], 0.4, label="started")
    right.bar([x + 0.2 for x in xs], [x["endpoints"] for x in rows], 0.4, label="loaded")
    right.set_xlabel("node")
    right.set_ylabel("VmRSS, master + worker (MiB)")
    right.legend(fontsize="small")
    fig.suptitle(
        f"pycilium cluster bench {r['date']}: {r['args']['nodes']} nodes, "
        f"{r['args']['endpoints']} endpoints",
        fontsize="small",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--endpoints", type=int, default=1000)
    p.add_argument("--rate", type=float, default=10.0, help="endpoints started per second")
    p.add_argument("--parallel", type=int, default=8, help="`docker run`s in flight at most")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of etcd at rest")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--plot", default=str(REPO / "docs" / "benchmarks" / "cluster.png"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.endpoints > PER_NODE * a.nodes:
        sys.exit(f"cluster: ERROR: at most {PER_NODE} endpoints per node (one /26 each)")
    if not ETCD:
        sys.exit("cluster: ERROR: no etcd binary on PATH: install Debian's etcd-server")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    now = dt.datetime.now(dt.UTC)
    r: dict = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/cluster.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(a),
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "commit": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "loadavg_at_start": os.getloadavg(),
        },
    }
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pcb-scale-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        r["cluster"] = run(a, workdir, stack)
        log("cleaning up")
    r["seconds"] = round(time.monotonic() - t0, 1)
    r["host"]["loadavg_at_end"] = os.getloadavg()
    stem = now.strftime("%Y-%m-%dT%H%MZ") + "-cluster"
    outdir = Path(a.results)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(r)
    (outdir / f"{stem}.md").write_text(md)
    print(md)
    made = plot(r, Path(a.plot))
    log(f"wrote {outdir / stem}.json and .md" + (f", {made}" if made else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
