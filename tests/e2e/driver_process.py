"""The real driver service, started as its own process group for end-to-end tests."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from datapath.netfilter import firewall, portmap

# A test instance of its own: other name, ranges, sockets and pin directory than `make run`'s,
# so the suite never touches a driver a user started.
TEST_SETTINGS = {
    "plugin_name": "pycilium-test",
    "api_socket": "/run/pycilium-test/api.sock",
    "state_dir": "/run/pycilium-test/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-test",
    "veth_prefix": "lxt",
    "cluster_prefix6": "fdce:1c01::/64",
    "node_range4": "10.214.0.0/16",
    "service_range6": "fdce:1c05::/64",
    "service_range4": "10.217.0.0/16",
    "node_id": "42",
}


class DriverProcess:
    def __init__(self, log_path: str, settings: dict = TEST_SETTINGS):
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.settings["plugin_name"]

    @property
    def plugin_socket(self) -> str:
        return f"/run/docker/plugins/{self.name}.sock"

    @staticmethod
    def cli_path() -> str:
        return os.path.join(os.path.dirname(sys.executable), "cilium")

    def start(self, timeout: float = 60.0, environment: dict | None = None) -> None:
        """Start the service; `environment` adds variables (e.g. PYCILIUM_FAILPOINTS)."""
        env = dict(os.environ)
        env.update({"CILIUM_" + k.upper(): v for k, v in self.settings.items()})
        env.update(environment or {})
        command = [os.path.join(os.path.dirname(sys.executable), "cilium-docker")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"driver exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                reply = plugin_call(self.plugin_socket, "Plugin.Activate")
                if "NetworkDriver" in reply.get("Implements", []):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"driver not ready after {timeout} s:\n{self.log_tail()}")

    def kill9(self) -> None:
        """kill -9 of every process of the service, gunicorn master and worker alike."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait_exit(self, timeout: float) -> int:
        """The exit status once the service has died by itself (a failpoint killed it)."""
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def cli(self, *args, stdin=None, check=True) -> subprocess.CompletedProcess:
        """The `cilium` command line against this instance."""
        result = subprocess.run(
            [self.cli_path(), "--socket", self.settings["api_socket"], *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"cilium {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def api(self, path: str):
        return http_get(self.settings["api_socket"], path)

    def purge(self) -> None:
        """Remove what the test instance keeps between runs: state, pinned maps, its FORWARD,
        masquerade and port-publishing rules, and the unreachable routes of its ranges (the driver
        keeps those while containers may run)."""
        shutil.rmtree(self.settings["state_dir"], ignore_errors=True)
        shutil.rmtree(self.settings["bpf_pin_dir"], ignore_errors=True)
        firewall.remove_forwarding(self.settings["veth_prefix"])
        firewall.remove_masquerade(self.settings["veth_prefix"])
        portmap.teardown(self.settings["veth_prefix"])
        owned = ("node_range4", "cluster_prefix6", "service_range4", "service_range6")
        for family, prefix in ((("-6" if ":" in self.settings[k] else "-4"), k) for k in owned):
            subprocess.run(
                ["ip", family, "route", "flush", "root", self.settings[prefix], "proto", "206"],
                check=True,
            )


@contextlib.contextmanager
def running(docker, log_path: str, settings: dict = TEST_SETTINGS):
    """A driver instance started afresh for a fixture's scope. Afterwards the containers of
    `docker` (a Docker) are removed, the instance stopped and purged, and none of its veths
    may be left."""
    process = DriverProcess(log_path, settings)
    process.purge()
    process.start()
    yield process
    docker.remove_all()
    process.stop()
    leftovers = veths(settings["veth_prefix"])
    process.purge()
    assert not leftovers, f"veths left behind: {leftovers}"


def veths(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def unix_http(path: str, request: bytes) -> bytes:
    """The raw HTTP response to a raw request over a unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _body(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


def plugin_call(sock: str, call: str, body: dict | None = None) -> dict:
    payload = json.dumps(body).encode() if body is not None else b""
    request = (
        f"POST /{call} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    return _body(unix_http(sock, request))[1]


def http_get(sock: str, path: str):
    request = f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode()
    status, body = _body(unix_http(sock, request))
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body}")
    return body
