"""What the benchmark scripts share: the driver's management API, through the `cilium`
command's client, best-effort commands and stopping servers for clean-up, and the summary
of a sample."""

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
