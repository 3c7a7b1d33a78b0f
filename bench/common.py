"""What both benchmark scripts need: the driver's management API over its unix socket, and
best-effort commands for clean-up."""

import contextlib
import http.client
import json
import socket
import subprocess

CILIUM_SOCK = "/var/run/cilium/cilium.sock"


def quiet(*args: str) -> None:
    """Best effort (cleanup): a failure or a hang does not stop the rest of the cleanup."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(args, capture_output=True, check=False, timeout=300)


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
