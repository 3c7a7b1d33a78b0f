"""Control-plane benchmarks of the `make run` driver (issue 6, targets 4-7).

  parallel  N containers started at once (`docker run -d` each): time until every one of
            them accepts connections from a sample of the others.
  policy    with 100 endpoints: from the start of `cilium policy import` to the datapath
            enforcing the new verdict on all 100 (a port flips between allowed and denied;
            real connection attempts from a client container), p50/p99 over repeated flips;
            the time to apply a 10,000-rule policy, and flips with those rules loaded.
  scale     250 running containers, each selected by a policy: reachability as the policy
            allows on sampled pairs, driver RSS (gunicorn master + worker) and BPF map memory.
  calls     plugin call latency p50/p99 (CreateEndpoint, Join, ...) from the driver's own
            histograms, over the calls this run made.

Creates only containers, a network and policy rules named pcb-ctl* and removes them on exit.
Connection attempts go from the host into the containers' network namespaces (a thread that
joined the namespace), only to addresses of the benchmark's own containers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import API, quiet, summary

from driver.cli.client import ApiError

REPO = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
PIDFILE = "/run/pycilium/cilium-docker.pid"
PIN_DIR = Path("/sys/fs/bpf/pycilium")
NETWORK = "pcb-ctl"
PREFIX = "pcb-ctl"
FLIP_POLICY = "pcb-ctl-flip"
BIG_POLICY = "pcb-ctl-big"
SERVER_CMD = ["sh", "-c", "httpd -p 81 -h /tmp && exec httpd -f -p 80 -h /tmp"]
BATCH = 2000  # rules per import request (the API takes at most 1 MiB)
CALL_METRIC = "pycilium_plugin_call_duration_seconds"
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def log(msg: str) -> None:
    print(f"control: {msg}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, timeout: float = 300) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:200]} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def import_rules(rules: list[dict]) -> float:
    """Import in batches; seconds from the first request's start to the last reply."""
    t0 = time.perf_counter()
    for k in range(0, len(rules), BATCH):
        text = json.dumps(rules[k : k + BATCH], separators=(",", ":"))
        API.request("PUT", "/v1/policy", {"text": text, "source": "bench/control.py"})
    return time.perf_counter() - t0


def delete_rules(name: str) -> None:
    with contextlib.suppress(ApiError):
        API.request("DELETE", f"/v1/policy?name={name}")


# --- connection attempts from inside a container --------------------------------------------


def _join_netns(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into the netns of pid {pid} failed")
    finally:
        os.close(fd)


def attempt(targets: list[tuple[str, int]], timeout: float) -> set[tuple[str, int]]:
    """One new TCP connection to each target at once; the targets that accepted in time."""
    sel = selectors.DefaultSelector()
    accepted = set()
    try:
        for target in targets:
            sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
            sock.setblocking(False)
            sock.connect_ex(target)
            sel.register(sock, selectors.EVENT_WRITE, target)
        deadline = time.monotonic() + timeout
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    accepted.add(key.data)
                sel.unregister(key.fileobj)
                key.fileobj.close()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return accepted


AGE = 0.25  # an attempt answered later than this counts only through a newer attempt


def _until_all(targets, deadline: float, interval: float) -> float | None:
    sel = selectors.DefaultSelector()
    pending, last = set(targets), None
    try:
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            for key in list(sel.get_map().values()):
                if now - key.data[1] > AGE:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
            for target in pending:
                sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
                sock.setblocking(False)
                sock.connect_ex(target)
                sel.register(sock, selectors.EVENT_WRITE, (target, now))
            until = now + interval
            while (left := until - time.monotonic()) > 0:
                for key, _ in sel.select(left):
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        pending.discard(key.data[0])
                        last = time.monotonic()
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return None if pending else last


class Prober:
    """Connection attempts made from one container's network namespace."""

    def __init__(self, container: str):
        pid = int(run(DOCKER, "inspect", "-f", "{{.State.Pid}}", container).strip())
        self.pool = ThreadPoolExecutor(1, initializer=_join_netns, initargs=(pid,))

    def attempt(self, targets, timeout: float) -> set:
        return self.pool.submit(attempt, list(targets), timeout).result()

    def until_all(self, targets, deadline: float, interval: float = 0.01) -> float | None:
        """A new connection attempt to each target not yet accepted every `interval` (each
        attempt kept open for up to AGE seconds) until all have accepted: the monotonic time
        when the last did, or None at the deadline."""
        return self.pool.submit(_until_all, list(targets), deadline, interval).result()

    def close(self) -> None:
        self.pool.shutdown()


# --- containers -----------------------------------------------------------------------------


def start(name: str, labels: dict, cmd: list[str], image: str) -> None:
    lab = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
    run(DOCKER, "run", "-d", "--name", name, "--net", NETWORK, *lab, image, *cmd)


def start_many(specs: list[tuple[str, dict]], image: str, parallel: int) -> None:
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda s: start(s[0], s[1], SERVER_CMD, image), specs))


def remove(names: list[str], parallel: int = 8) -> None:
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda n: quiet(DOCKER, "rm", "-f", n), names))


def addresses(names: list[str]) -> dict[str, str]:
    """Container name -> its IPv6 address on the benchmark network."""
    found = {}
    for k in range(0, len(names), 100):
        for c in json.loads(run(DOCKER, "inspect", *names[k : k + 100])):
            found[c["Name"].lstrip("/")] = c["NetworkSettings"]["Networks"][NETWORK][
                "GlobalIPv6Address"
            ]
    return found


def ours() -> list[str]:
    out = run(DOCKER, "ps", "-a", "--filter", f"name=^{PREFIX}-", "--format", "{{.Names}}")
    return out.split()


# --- driver figures -------------------------------------------------------------------------


def metrics() -> str:
    return API.text("/metrics")


def call_histograms(text: str) -> dict[str, dict[float, float]]:
    """call -> {bucket upper bound: cumulative count} of the plugin call histogram."""
    found: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if line.startswith(CALL_METRIC + "_bucket{"):
            labels, value = line[len(CALL_METRIC) + 8 :].rsplit("} ", 1)
            pairs = dict(p.split("=", 1) for p in labels.split(","))
            le = pairs["le"].strip('"')
            call = pairs["call"].strip('"')
            found.setdefault(call, {})[float("inf") if le == "+Inf" else float(le)] = float(value)
    return found


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """histogram_quantile: linear inside the bucket holding the q-th observation."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def call_latency(before: str, after: str) -> dict:
    old, new = call_histograms(before), call_histograms(after)
    out = {}
    for call, buckets in sorted(new.items()):
        delta = {b: c - old.get(call, {}).get(b, 0.0) for b, c in buckets.items()}
        count = delta[float("inf")]
        if count:
            out[call] = {
                "calls": int(count),
                "p50_ms": round(quantile(delta, 0.5) * 1000, 2),
                "p99_ms": round(quantile(delta, 0.99) * 1000, 2),
            }
    return out


def gauge(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(None, 1)[1])
    return None


def driver_rss_kib() -> dict[str, int]:
    """VmRSS of the gunicorn master (the pid `make run` recorded) and its workers."""
    master = int(Path(PIDFILE).read_text().split()[0])
    pids = [master, *map(int, run("pgrep", "-P", str(master), check=False).split())]
    found = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["master" if pid == master else f"worker {pid}"] = int(line.split()[1])
    return found


def bpf_map_memlock() -> dict[str, int]:
    """Pinned map name -> bytes of memory the kernel charges for it (bpftool memlock)."""
    found = {}
    for path in sorted(PIN_DIR.iterdir()):
        info = json.loads(run("bpftool", "map", "show", "pinned", str(path), "-j"))
        found[path.name] = int(info["bytes_memlock"])
    return found


# --- the scenarios --------------------------------------------------------------------------


def flip_rule(port: int) -> list[dict]:
    return [
        {
            "endpointSelector": {"matchLabels": {"app": f"{PREFIX}-srv"}},
            "labels": [{"key": "name", "value": FLIP_POLICY}],
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": f"{PREFIX}-cli"}}],
                    "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
                },
                {
                    "fromEndpoints": [{"matchLabels": {"app": f"{PREFIX}-srv"}}],
                    "toPorts": [{"ports": [{"port": "81", "protocol": "TCP"}]}],
                },
            ],
        },
        {
            "endpointSelector": {"matchLabels": {"app": f"{PREFIX}-cli"}},
            "labels": [{"key": "name", "value": FLIP_POLICY}, {"key": "side", "value": "cli"}],
            "egress": [{"toEndpoints": [{"matchLabels": {"app": f"{PREFIX}-srv"}}]}],
        },
    ]


class Control:
    def __init__(self, a: argparse.Namespace, stack: contextlib.ExitStack):
        self.a = a
        self.stack = stack
        self.servers: list[str] = []
        self.addr: dict[str, str] = {}
        self.cli: Prober | None = None

    def setup(self) -> None:
        remove(ours())
        quiet(DOCKER, "network", "rm", NETWORK)
        for name in (FLIP_POLICY, BIG_POLICY):
            delete_rules(name)
        self.stack.callback(quiet, DOCKER, "network", "rm", NETWORK)
        self.stack.callback(lambda: remove(ours()))
        self.stack.callback(delete_rules, BIG_POLICY)
        self.stack.callback(delete_rules, FLIP_POLICY)
        run(
            DOCKER,
            "network",
            "create",
            "-d",
            "cilium",
            "--ipam-driver",
            "cilium",
            "--ipv6",
            NETWORK,
        )
        import_rules(flip_rule(80))
        start(f"{PREFIX}-cli", {"app": f"{PREFIX}-cli"}, ["sleep", "infinity"], self.a.image)
        self.cli = Prober(f"{PREFIX}-cli")
        self.stack.callback(self.cli.close)

    def grow(self, count: int) -> float:
        """Servers up to `count`, started `--parallel` at a time; seconds it took."""
        have = len(self.servers)
        names = [f"{PREFIX}-srv-{i}" for i in range(have, count)]
        t0 = time.monotonic()
        start_many(
            [(n, {"app": f"{PREFIX}-srv", "idx": n.rsplit("-", 1)[1]}) for n in names],
            self.a.image,
            self.a.parallel,
        )
        seconds = time.monotonic() - t0
        self.servers += names
        self.addr.update(addresses(names))
        return seconds

    def targets(self, names, port: int) -> list[tuple[str, int]]:
        return [(self.addr[n], port) for n in names]

    def parallel_starts(self) -> dict:
        return {"rounds": [self._parallel_round(r) for r in range(self.a.parallel_rounds)]}

    def _parallel_round(self, r: int) -> dict:
        names = [f"{PREFIX}-par-{i}" for i in range(self.a.parallel_count)]
        labels = {"app": f"{PREFIX}-srv", "idx": "par"}
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: start(n, labels, SERVER_CMD, self.a.image), names))
        started = time.monotonic()
        self.addr.update(addresses(names))
        # Servers reach each other on port 81: every one from a sample of sources.
        sources = random.Random(r).sample(names, min(self.a.sources, len(names)))
        probers = [Prober(s) for s in sources]
        deadline = time.monotonic() + 60
        targets = self.targets(names, 81)
        with ThreadPoolExecutor(len(probers)) as pool:
            ends = list(pool.map(lambda p: p.until_all(targets, deadline), probers))
        for p in probers:
            p.close()
        reached = None if None in ends else max(ends) - t0
        result = {
            "containers": len(names),
            "docker_run_all_returned_s": round(started - t0, 3),
            "all_reach_each_other_s": None if reached is None else round(reached, 3),
            "sources": len(sources),
        }
        log(f"parallel round {r + 1}: {result}")
        t1 = time.monotonic()
        remove(names, parallel=len(names))
        result["removal_s"] = round(time.monotonic() - t1, 3)
        for n in names:
            self.addr.pop(n, None)
        return result

    def flips(self, count: int, endpoints: list[str]) -> dict:
        """Import a policy that moves the client's allowed port (80 <-> 81) and time, from the
        import's start, until every endpoint accepts the newly allowed port."""
        api_s, enforced_s, denied_ok = [], [], []
        port = 80
        for i in range(count):
            port = 81 if port == 80 else 80
            deadline = time.monotonic() + 30
            t0 = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                call = pool.submit(import_rules, flip_rule(port))
                done = self.cli.until_all(self.targets(endpoints, port), deadline)
                api_s.append(call.result())
            if done is None:
                raise RuntimeError(f"flip {i}: not every endpoint accepted port {port} in 30 s")
            enforced_s.append(done - t0)
            sample = random.Random(i).sample(endpoints, min(10, len(endpoints)))
            closed = 80 if port == 81 else 81
            denied_ok.append(not self.cli.attempt(self.targets(sample, closed), 0.3))
            log(
                f"flip {i + 1}/{count}: api {api_s[-1] * 1000:.1f} ms, "
                f"enforced on all {len(endpoints)} {enforced_s[-1] * 1000:.1f} ms"
            )
        if port != 80:
            import_rules(flip_rule(80))
        return {
            "endpoints": len(endpoints),
            "import_api_s": summary(api_s),
            "enforced_on_all_s": summary(enforced_s),
            "old_port_denied_on_sample": all(denied_ok),
        }

    def big_policy(self, endpoints: list[str]) -> dict:
        """10,000 rules, each giving one endpoint (by its idx label) one more port."""
        rules = []
        for i in range(self.a.big_rules):
            idx = endpoints[i % len(endpoints)].rsplit("-", 1)[1]
            rules.append(
                {
                    "endpointSelector": {"matchLabels": {"app": f"{PREFIX}-srv", "idx": idx}},
                    "labels": [
                        {"key": "name", "value": BIG_POLICY},
                        {"key": "batch", "value": str(i // BATCH)},
                    ],
                    "ingress": [
                        {
                            "fromEndpoints": [{"matchLabels": {"app": f"{PREFIX}-cli"}}],
                            "toPorts": [{"ports": [{"port": str(10000 + i), "protocol": "TCP"}]}],
                        }
                    ],
                }
            )
        seconds = import_rules(rules)
        text = metrics()
        entries = gauge(text, "pycilium_bpf_map_entries", map="policy")
        sample = API.get(f"/v1/bpf/policy/{endpoints[0]}")
        flips = self.flips(self.a.big_flips, endpoints)
        t0 = time.perf_counter()
        API.request("DELETE", f"/v1/policy?name={BIG_POLICY}")
        return {
            "rules": len(rules),
            "import_s": round(seconds, 3),
            "policy_map_entries": entries,
            "entries_of_one_endpoint": len(sample),
            "flips_with_rules_loaded": flips,
            "delete_s": round(time.perf_counter() - t0, 3),
        }

    def reachability(self) -> dict:
        """Client -> every server on 80 (allowed); samples of what the policy denies
        (client -> 81, server -> server 80) and allows (server -> server 81)."""
        rng = random.Random(7)
        allowed = self.cli.attempt(self.targets(self.servers, 80), 3.0)
        sample = rng.sample(self.servers, min(20, len(self.servers)))
        cli_denied = self.cli.attempt(self.targets(sample, 81), 0.5)
        pairs = tried = denied = 0
        for src in rng.sample(self.servers, min(10, len(self.servers))):
            prober = Prober(src)
            peers = [p for p in rng.sample(self.servers, 3) if p != src]
            tried += len(peers)
            pairs += len(prober.attempt(self.targets(peers, 81), 3.0))
            denied += len(peers) - len(prober.attempt(self.targets(peers, 80), 0.5))
            prober.close()
        return {
            "client -> every server :80 allowed": f"{len(allowed)}/{len(self.servers)}",
            "client -> sample :81 denied": f"{len(sample) - len(cli_denied)}/{len(sample)}",
            "server -> server :81 allowed": f"{pairs}/{tried}",
            "server -> server :80 denied": f"{denied}/{tried}",
        }

    def memory(self, label: str) -> dict:
        rss = driver_rss_kib()
        maps = bpf_map_memlock()
        endpoints = len(API.get("/v1/endpoints"))
        text = metrics()
        return {
            "at": label,
            "endpoints": endpoints,
            "driver_rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
            "driver_rss_total_mib": round(sum(rss.values()) / 1024, 1),
            "bpf_map_memlock_mib": round(sum(maps.values()) / 2**20, 1),
            "bpf_maps": {k: round(v / 2**20, 2) for k, v in maps.items()},
            "policy_map_entries": gauge(text, "pycilium_bpf_map_entries", map="policy"),
        }


def markdown(r: dict) -> str:
    out = [
        f"# Control-plane benchmark, {r['date']}",
        "",
        f"`{r['command']}`, commit "
        f"`{r['host']['commit'][:12]}`, {r['host']['cpus']} CPUs, kernel "
        f"{r['host']['kernel']}.",
        "",
    ]
    if "parallel" in r:
        out += [
            "## Parallel starts",
            "",
            "| round | containers | all `docker run -d` returned | all reach each other "
            "| removal |",
            "|---|---|---|---|---|",
        ]
        for i, x in enumerate(r["parallel"]["rounds"], 1):
            out.append(
                f"| {i} | {x['containers']} | {x['docker_run_all_returned_s']} s | "
                f"{x['all_reach_each_other_s']} s | {x['removal_s']} s |"
            )
        out.append("")
    if "policy" in r:
        p = r["policy"]
        out += [
            "## Policy update latency",
            "",
            "| policy in force | endpoints | flips | import API p50 / p99 | enforced on all "
            "p50 / p99 (max) | old port denied |",
            "|---|---|---|---|---|---|",
        ]
        rows = [("2 rules", p["flips"])]
        if "big" in p:
            rows.append((f"{p['big']['rules']} + 2 rules", p["big"]["flips_with_rules_loaded"]))
        for what, f in rows:
            a, e = f["import_api_s"], f["enforced_on_all_s"]
            out.append(
                f"| {what} | {f['endpoints']} | {a['n']} | {a['p50'] * 1000:.0f} / "
                f"{a['p99'] * 1000:.0f} ms | {e['p50'] * 1000:.0f} / {e['p99'] * 1000:.0f}"
                f" ({e['max'] * 1000:.0f}) ms | {f['old_port_denied_on_sample']} |"
            )
        if "big" in p:
            b = p["big"]
            out += [
                "",
                f"{b['rules']} rules: import {b['import_s']} s "
                f"({b['policy_map_entries']:.0f} policy map entries, "
                f"{b['entries_of_one_endpoint']} on one endpoint), "
                f"delete {b['delete_s']} s.",
            ]
        out.append("")
    if "scale" in r:
        s = r["scale"]
        out += [
            "## Scale and memory",
            "",
            "| endpoints | driver RSS (master + worker) | BPF map memlock | policy map entries |",
            "|---|---|---|---|",
        ]
        for m in s["memory"]:
            parts = " + ".join(f"{v}" for v in m["driver_rss_mib"].values())
            out.append(
                f"| {m['endpoints']} | {m['driver_rss_total_mib']} MiB ({parts}) | "
                f"{m['bpf_map_memlock_mib']} MiB | {m['policy_map_entries']:.0f} |"
            )
        out += [
            "",
            f"Start of {s['started']} servers ({r['args']['parallel']} at a time): "
            f"{s['start_s']} s. Per endpoint (from {s['memory'][0]['endpoints']} to "
            f"{s['memory'][-1]['endpoints']}): driver RSS {s['rss_kib_per_endpoint']} KiB.",
        ]
        out += ["", "Reachability: " + ", ".join(f"{k}: {v}" for k, v in s["reach"].items()), ""]
    if "calls" in r:
        out += [
            "## Plugin call latency (driver histograms, this run's calls)",
            "",
            "| call | calls | p50 | p99 |",
            "|---|---|---|---|",
        ]
        for call, c in r["calls"].items():
            out.append(f"| {call} | {c['calls']} | {c['p50_ms']} ms | {c['p99_ms']} ms |")
        out.append("")
    load = ", ".join(f"{x:.1f}" for x in r["host"]["loadavg_at_end"])
    out.append(f"Total {r['seconds']} s; load average at the end {load}.")
    return "\n".join(out) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", default="parallel,policy,scale,calls")
    p.add_argument("--image", default="pycilium/busybox:latest")
    p.add_argument("--parallel", type=int, default=8, help="containers started at a time")
    p.add_argument("--parallel-count", type=int, default=50)
    p.add_argument("--parallel-rounds", type=int, default=2)
    p.add_argument("--sources", type=int, default=5, help="sampled sources per parallel round")
    p.add_argument("--endpoints", type=int, default=100, help="servers for policy latency")
    p.add_argument("--flips", type=int, default=20)
    p.add_argument("--big-rules", type=int, default=10000)
    p.add_argument("--big-flips", type=int, default=6)
    p.add_argument("--scale", type=int, default=250, help="running containers (client included)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    scenarios = set(a.scenarios.split(","))
    if os.geteuid() != 0:
        sys.exit("control: ERROR: must run as root")
    # Hundreds of connection attempts are in flight at once.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        before = metrics()
    except ApiError as exc:
        sys.exit(f"control: ERROR: the driver does not answer ({exc}): make run")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    now = dt.datetime.now(dt.UTC)
    r: dict = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/control.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(a),
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "commit": run("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).strip(),
            # Others share this machine: the load says how much.
            "loadavg_at_start": os.getloadavg(),
        },
    }
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        c = Control(a, stack)
        c.setup()
        if "parallel" in scenarios:
            r["parallel"] = c.parallel_starts()
        memory = [c.memory("start")]
        if "policy" in scenarios or "scale" in scenarios:
            start_s = c.grow(a.endpoints)
            memory.append(c.memory(f"{a.endpoints} servers"))
        if "policy" in scenarios:
            r["policy"] = {"flips": c.flips(a.flips, c.servers)}
            if a.big_rules:
                r["policy"]["big"] = c.big_policy(c.servers)
        if "scale" in scenarios:
            start_s += c.grow(a.scale - 1)
            memory.append(c.memory(f"{a.scale - 1} servers"))
            first, last = memory[0], memory[-1]
            per = (
                (last["driver_rss_total_mib"] - first["driver_rss_total_mib"])
                * 1024
                / max(last["endpoints"] - first["endpoints"], 1)
            )
            r["scale"] = {
                "started": len(c.servers),
                "start_s": round(start_s, 1),
                "memory": memory,
                "rss_kib_per_endpoint": round(per, 1),
                "reach": c.reachability(),
            }
        if "calls" in scenarios:
            r["calls"] = call_latency(before, metrics())
        log("cleaning up")
    r["seconds"] = round(time.monotonic() - t0, 1)
    r["host"]["loadavg_at_end"] = os.getloadavg()
    stem = now.strftime("%Y-%m-%dT%H%MZ") + "-control"
    outdir = Path(a.results)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(r)
    (outdir / f"{stem}.md").write_text(md)
    print(md)
    log(f"wrote {outdir / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
