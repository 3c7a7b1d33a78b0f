"""What the benchmark scripts share: the driver's management API, through the `cilium`
command's client, best-effort commands and stopping servers for clean-up, the summary of
a sample, and an endpoint's namespace set up as Docker would."""

import contextlib
import os
import statistics
import subprocess

from driver.cli.client import API_SOCKET_ENV, DEFAULT_API_SOCKET, ApiClient

# Imports of thousands of rules may take minutes. The `cilium` command's variable names
# another instance's socket.
API = ApiClient(os.environ.get(API_SOCKET_ENV, DEFAULT_API_SOCKET), timeout=600)


def quiet(*args: str) -> None:
    """Best effort (cleanup): a failure or a hang does not stop the rest of the cleanup."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(args, capture_output=True, check=False, timeout=300)


def stop(p: subprocess.Popen) -> None:
    """End a server the benchmark started: politely, then for sure."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50": round(percentile(xs, 0.5), 4),
        "p99": round(percentile(xs, 0.99), 4),
        "min": round(min(xs), 4),
        "max": round(max(xs), 4),
        "mean": round(statistics.fmean(xs), 4),
    }


def container_netns(run, ns: str, ifname: str, from_ns: str | None = None) -> None:
    """A new namespace ns with ifname (of from_ns, else of this namespace) as its eth0, up,
    as Docker makes a container's. run(*args) runs a command and raises on failure."""
    run("ip", "netns", "add", ns)
    run(*(("ip", "-n", from_ns) if from_ns else ("ip",)), "link", "set", ifname, "netns", ns)
    ip = ("ip", "-n", ns)
    run(*ip, "link", "set", ifname, "name", "eth0")
    run(*ip, "link", "set", "lo", "up")
    run(*ip, "link", "set", "eth0", "up")


def docker_addresses(run, ns: str, ip6, ip4, router6, router4, routes4: bool = True) -> None:
    """eth0 of ns addressed and routed as Docker does from the driver's Join answer: a /128
    and a /32, the router on-link and the default route through it (IPv4's only with
    routes4)."""
    ip = ("ip", "-n", ns)
    run(*ip, "-6", "addr", "add", f"{ip6}/128", "dev", "eth0", "nodad")
    run(*ip, "addr", "add", f"{ip4}/32", "dev", "eth0")
    run(*ip, "-6", "route", "add", str(router6), "dev", "eth0")
    run(*ip, "-6", "route", "add", "default", "via", str(router6), "dev", "eth0")
    if routes4:
        run(*ip, "route", "add", f"{router4}/32", "dev", "eth0")
        run(*ip, "route", "add", "default", "via", str(router4), "dev", "eth0")
