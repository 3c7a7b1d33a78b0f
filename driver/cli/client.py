"""A small HTTP client for the management API on its unix socket. It depends on nothing of
the driver, so the `cilium` command and the benchmarks start without the control plane; the
driver's Config takes its default socket from here."""

import contextlib
import http.client
import json
import socket

DEFAULT_API_SOCKET = "/var/run/cilium/cilium.sock"
API_SOCKET_ENV = "CILIUM_API_SOCKET"


class ApiError(Exception):
    """The driver refused a request, or does not answer; the message says which."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _refusal(status: int, data: bytes) -> ApiError:
    """The driver's {"Err": ...} of a failed request, or its HTTP status."""
    try:
        message = json.loads(data).get("Err")
    except (ValueError, AttributeError):
        message = None
    return ApiError(message or f"HTTP {status}")


class ApiClient:
    def __init__(self, socket_path: str = DEFAULT_API_SOCKET, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    @contextlib.contextmanager
    def _connection(self, timeout: float | None):
        """A connection to the driver; a driver that does not answer is a clear error."""
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            yield conn
        except OSError as exc:
            raise ApiError(
                f"cannot reach the driver at {self.socket_path}: {exc} (is it running?)"
            ) from None
        finally:
            conn.close()

    def _exchange(self, method: str, path: str, body=None) -> bytes:
        """The body of the answer to one request; ApiError for a refusal."""
        with self._connection(self.timeout) as conn:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload)
            response = conn.getresponse()
            data = response.read()
        if response.status >= 400:
            raise _refusal(response.status, data)
        return data

    def request(self, method: str, path: str, body=None):
        data = self._exchange(method, path, body)
        return json.loads(data) if data else {}

    def get(self, path: str):
        return self.request("GET", path)

    def text(self, path: str) -> str:
        """A resource that is not JSON (the Prometheus exposition at /metrics)."""
        return self._exchange("GET", path).decode()

    def stream(self, path: str):
        """JSON objects of a streaming GET, one per non-empty line, until the server stops."""
        with self._connection(None) as conn:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status >= 400:
                raise _refusal(response.status, response.read())
            for line in response:
                if line.strip():
                    yield json.loads(line)
