"""pycilium benchmark harness (`make bench`).

Compares, side by side in one invocation, single-stream TCP throughput (iperf3, IPv6 and IPv4)
between two network namespaces joined to the host by veths with plain routing (raw), Docker's
bridge, raw plus an ip(6)tables chain of N rules (matching rule last) and two containers on a
cilium network with N policy rules (the allowed flow matching one of them); and the wall time of
`docker run --rm` on a cilium network against the bridge. Runs are interleaved (A B A B ...),
every figure is a median with min and max, and every comparison is a ratio to the raw run of
the same round.

Uses the driver that `make run` started; creates only its own namespaces, containers, networks,
ip(6)tables chains and routes (all named pcb*/pcb-bench*) and removes them on exit, even on
failure. Raw traffic stays inside test ranges that are unreachable on the host during the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
CILIUM_SOCK = "/var/run/cilium/cilium.sock"
NETWORK_CIL = "pcb-bench-cil"
NETWORK_BR6 = "pcb-bench-br6"
POLICY_NAME = "bench"
PORT = 5201
BATCH = 2000  # rules per import request
COMPILE_METRIC = "pycilium_bpf_compile_duration_seconds_count"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:200]} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def quiet(*args: str) -> None:
    """Best effort (cleanup): ignore failures."""
    subprocess.run(args, capture_output=True, check=False, timeout=120)


# --- the driver's management socket --------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def api(method: str, path: str, body: dict | None = None, timeout: float = 600) -> bytes:
    conn = _UnixConnection(CILIUM_SOCK, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {payload[:300]!r}")
        return payload
    finally:
        conn.close()


def compile_count() -> float:
    total = 0.0
    for line in api("GET", "/metrics").decode().splitlines():
        if line.startswith(COMPILE_METRIC):
            total += float(line.rsplit(None, 1)[1])
    return total


def require_driver() -> None:
    try:
        api("GET", "/metrics", timeout=5)
    except (OSError, RuntimeError) as exc:
        sys.exit(
            f"bench: ERROR: the cilium driver does not answer on {CILIUM_SOCK} ({exc}).\n"
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
        self.meta: dict = {}

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
        variants = ["raw"] + [f"ipt-{n}" for n in self.a.rules]
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
                pair[side] = ns
                pair["host"][side] = hv
                pair[f"v6{side}"], pair[f"v4{side}"] = str(c6), str(c4)
            self.pairs[variant] = pair
            srv = subprocess.Popen(
                ["ip", "netns", "exec", pair["b"], "iperf3", "-s", "-p", str(PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.servers.append(srv)
            self.stack.callback(_stop, srv)
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
                        f"-A PCB-BENCH-{n} -s {src} -d {dst} -p tcp --dport {PORT} -j ACCEPT"
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

    def _container(self, name: str, net: str, labels: dict, cmd: list[str]) -> None:
        quiet(DOCKER, "rm", "-f", name)
        self.stack.callback(quiet, DOCKER, "rm", "-f", name)
        lab = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
        run(DOCKER, "run", "-d", "--name", name, "--net", net, *lab, self.a.image, *cmd)

    def _addrs(self, name: str, net: str) -> tuple[str, str]:
        fmt = (
            f'{{{{with index .NetworkSettings.Networks "{net}"}}}}'
            "{{.GlobalIPv6Address}} {{.IPAddress}}{{end}}"
        )
        v6, v4 = [*run(DOCKER, "inspect", "-f", fmt, name).strip("\n").split(" "), "", ""][:2]
        return v6, v4

    def setup_docker(self) -> None:
        # Bridge: Docker's default bridge for IPv4; it has no IPv6, so IPv6 uses a user-defined
        # bridge network (same driver) with a subnet inside the test range.
        quiet(DOCKER, "network", "rm", NETWORK_BR6)
        self.stack.callback(quiet, DOCKER, "network", "rm", NETWORK_BR6)
        br6 = list(self.range6.subnets(new_prefix=64))[-1]
        br4 = list(self.range4.subnets(new_prefix=24))[-1]
        run(
            DOCKER,
            "network",
            "create",
            "--ipv6",
            "--subnet",
            str(br6),
            "--subnet",
            str(br4),
            NETWORK_BR6,
        )
        self._container("pcb-bench-br-srv", "bridge", {}, ["iperf3", "-s", "-p", str(PORT)])
        self._container("pcb-bench-br-cli", "bridge", {}, ["sleep", "infinity"])
        for c in ("pcb-bench-br-srv", "pcb-bench-br-cli"):
            run(DOCKER, "network", "connect", NETWORK_BR6, c)
        self.cpair["bridge"] = {
            "cli": "pcb-bench-br-cli",
            "v6": self._addrs("pcb-bench-br-srv", NETWORK_BR6)[0],
            "v4": self._addrs("pcb-bench-br-srv", "bridge")[1],
        }
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
        for n in self.a.rules:
            name = f"pcb-bench-cil-srv-{n}"
            self._container(
                name, NETWORK_CIL, {"app": f"pcb-bench-srv-{n}"}, ["iperf3", "-s", "-p", str(PORT)]
            )
            v6, v4 = self._addrs(name, NETWORK_CIL)
            self.cpair[f"cil-{n}"] = {"cli": "pcb-bench-cil-cli", "v6": v6, "v4": v4}

    def load_policy(self) -> None:
        rules = []
        for n in self.a.rules:
            for i in range(n):
                port = PORT if i == n - 1 else 10000 + i
                rules.append(
                    {
                        "endpointSelector": {"matchLabels": {"app": f"pcb-bench-srv-{n}"}},
                        "labels": [{"key": "name", "value": POLICY_NAME}],
                        "ingress": [
                            {
                                "fromEndpoints": [{"matchLabels": {"app": "pcb-bench-cli"}}],
                                "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
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
            api("PUT", "/v1/policy", body)
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
                entries[n] = len(json.loads(api("GET", f"/v1/bpf/policy/pcb-bench-cil-srv-{n}")))
        self.meta["policy_map_entries"] = entries

    @staticmethod
    def _delete_policy() -> None:
        with contextlib.suppress(Exception):
            api("DELETE", f"/v1/policy?name={POLICY_NAME}")

    # -- measurements --

    def iperf(self, variant: str, fam: str) -> float:
        t = str(self.a.duration)
        if variant in self.pairs:
            p = self.pairs[variant]
            cmd = ["ip", "netns", "exec", p["a"], "iperf3", "-c", p[f"{fam}b"]]
        else:
            c = self.cpair[variant]
            cmd = [DOCKER, "exec", c["cli"], "iperf3", "-c", c[fam]]
        cmd += ["-p", str(PORT), "-t", t, "-J", "--connect-timeout", "3000"]
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
        variants = ["raw", "bridge"] + [f"ipt-{n}" for n in self.a.rules]
        variants += [f"cil-{n}" for n in self.a.rules]
        samples: dict = {fam: {v: [] for v in variants} for fam in self.a.families}
        for r in range(self.a.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for fam in self.a.families:
                for v in order:
                    g = self.iperf(v, fam)
                    samples[fam][v].append(g)
                    log(f"round {r + 1}/{self.a.rounds} {fam} {label(v, fam):16} {g:7.2f} Gbit/s")
        return samples

    def lifecycle(self) -> dict:
        out: dict = {"cilium": [], "bridge": []}
        before = compile_count()
        for r in range(self.a.lifecycle_rounds):
            order = ("cilium", "bridge") if r % 2 == 0 else ("bridge", "cilium")
            for which in order:
                net = NETWORK_CIL if which == "cilium" else "bridge"
                t0 = time.monotonic()
                run(DOCKER, "run", "--rm", "--net", net, self.a.lifecycle_image, "true")
                out[which].append(time.monotonic() - t0)
            log(
                f"lifecycle pair {r + 1}: cilium {out['cilium'][-1]:.2f} s, "
                f"bridge {out['bridge'][-1]:.2f} s"
            )
        after = compile_count()
        out["bpf_compiles"] = {"before": before, "after": after, "delta": after - before}
        return out


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


# --- reporting ------------------------------------------------------------------------------


def label(variant: str, fam: str) -> str:
    if variant.startswith("ipt-"):
        return ("ip6tables-" if fam == "v6" else "iptables-") + variant[4:]
    if variant.startswith("cil-"):
        return "pycilium-" + variant[4:]
    return variant


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarize(samples: dict) -> dict:
    summary: dict = {}
    for fam, per in samples.items():
        raw = per["raw"]
        summary[fam] = {}
        for v, xs in per.items():
            ratios = [x / r for x, r in zip(xs, raw, strict=True)]
            summary[fam][v] = {
                "label": label(v, fam),
                "gbit_s": stats(xs),
                "ratio_to_raw": stats(ratios),
            }
    return summary


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        f"# pycilium benchmark, {result['date']}",
        "",
        f"Host: {result['host']['kernel']}, {result['host']['cpus']} CPUs. "
        f"iperf3 TCP, one stream, {a['duration']} s per run, {a['rounds']} interleaved rounds; "
        "median (min-max); ratio = run / raw run of the same round.",
        "",
        "| family | path | Gbit/s median | min | max | ratio to raw median (min-max) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for fam, per in result["throughput"]["summary"].items():
        for s in per.values():
            g, q = s["gbit_s"], s["ratio_to_raw"]
            lines.append(
                f"| IPv{fam[1]} | {s['label']} | {g['median']:.2f} | {g['min']:.2f} | "
                f"{g['max']:.2f} | {q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}) |"
            )
    lc = result.get("lifecycle")
    if lc:
        c, b = stats(lc["cilium"]), stats(lc["bridge"])
        ratios = stats([x / y for x, y in zip(lc["cilium"], lc["bridge"], strict=True)])
        lines += [
            "",
            f"Endpoint lifecycle, `docker run --rm --net X {a['lifecycle_image']} true`, "
            f"{len(lc['cilium'])} interleaved pairs (seconds):",
            "",
            "| network | median | min | max |",
            "|---|---:|---:|---:|",
            f"| cilium | {c['median']:.2f} | {c['min']:.2f} | {c['max']:.2f} |",
            f"| bridge | {b['median']:.2f} | {b['min']:.2f} | {b['max']:.2f} |",
            "",
            f"cilium / bridge: {ratios['median']:.2f} ({ratios['min']:.2f}-{ratios['max']:.2f}); "
            f"BPF compiles (pycilium_bpf_compile_duration_seconds_count) "
            f"{lc['bpf_compiles']['before']:.0f} -> {lc['bpf_compiles']['after']:.0f} "
            f"(+{lc['bpf_compiles']['delta']:.0f}).",
        ]
    pi = result["meta"].get("policy_import")
    if pi:
        lines += [
            "",
            f"Policy import: {pi['rules']} rules in {pi['seconds']} s "
            f"({pi['bpf_compiles']:.0f} BPF compiles); policy map entries per server: "
            f"{result['meta'].get('policy_map_entries')}.",
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict, outdir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (pip install '.[bench]'): no plots")
        return []
    summary = result["throughput"]["summary"]
    rules = result["args"]["rules"]
    fams = list(summary)
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4), squeeze=False)
    for ax, fam in zip(axes[0], fams, strict=True):
        per = summary[fam]
        for prefix, name in (
            ("cil", "pycilium"),
            ("ipt", "ip6tables" if fam == "v6" else "iptables"),
        ):
            med = [per[f"{prefix}-{n}"]["gbit_s"]["median"] for n in rules]
            lo = [
                m - per[f"{prefix}-{n}"]["gbit_s"]["min"] for m, n in zip(med, rules, strict=True)
            ]
            hi = [
                per[f"{prefix}-{n}"]["gbit_s"]["max"] - m for m, n in zip(med, rules, strict=True)
            ]
            ax.errorbar(rules, med, yerr=[lo, hi], marker="o", capsize=3, label=f"{name}-N")
        for v, style in (("raw", "--"), ("bridge", ":")):
            ax.axhline(per[v]["gbit_s"]["median"], linestyle=style, color="grey", label=v)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(-20, max(rules) * 1.5)
        ax.set_xlabel("rules N")
        ax.set_ylabel("Gbit/s (median, min-max)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"IPv{fam[1]} TCP, 1 stream")
        ax.legend(fontsize="small")
    fig.suptitle(f"pycilium bench {result['date']}", fontsize="small")
    fig.tight_layout()
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "throughput-vs-rules.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run (3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--rules", default="0,1000,10000", help="rule counts N (0,1000,10000)")
    p.add_argument("--families", default="v6,v4", help="v6,v4")
    p.add_argument("--lifecycle-rounds", type=int, default=5, help="docker run pairs (5; 0: skip)")
    p.add_argument("--image", default=os.environ.get("BENCH_IMAGE", "pycilium/bench-iperf3:latest"))
    p.add_argument("--lifecycle-image", default=os.environ.get("IMAGE", "pycilium/busybox:latest"))
    p.add_argument("--range6", default="fdbe:7c00:ba5e::/48", help="raw namespaces' IPv6 range")
    p.add_argument("--range4", default="198.18.0.0/15", help="raw namespaces' IPv4 range")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--plots", default=str(REPO / "docs" / "benchmarks"))
    a = p.parse_args(argv)
    a.rules = sorted({int(x) for x in a.rules.split(",") if x.strip()})
    a.families = [f.strip() for f in a.families.split(",") if f.strip()]
    if any(n > 50000 or n < 0 for n in a.rules) or not a.rules:
        p.error("--rules: counts between 0 and 50000")
    if not set(a.families) <= {"v6", "v4"}:
        p.error("--families: v6 and/or v4")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: ERROR: must run as root")
    require_driver()
    check_ranges([ipaddress.ip_network(a.range6), ipaddress.ip_network(a.range4)])
    for tool in ("iperf3", "ip6tables-restore", "iptables-restore"):
        run("sh", "-c", f"command -v {tool}")
    run(DOCKER, "image", "inspect", a.image)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    now = dt.datetime.now(dt.UTC)
    result: dict = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "args": {k: v for k, v in vars(a).items() if k not in ("results", "plots")},
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
        b.setup_raw()
        b.setup_docker()
        b.load_policy()
        samples = b.throughput()
        result["throughput"] = {"samples_gbit_s": samples, "summary": summarize(samples)}
        if a.lifecycle_rounds:
            result["lifecycle"] = b.lifecycle()
        result["meta"] = b.meta
        log("cleaning up")
    result["seconds"] = round(time.monotonic() - t0, 1)
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
