"""A small HTTP client for the management API on its unix socket."""

import contextlib
import http.client
import json
import socket

from driver.errors import DriverError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class ApiClient:
    def __init__(self, socket_path: str, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    @contextlib.contextmanager
    def _connection(self, timeout: float | None):
        """A connection to the driver; a driver that does not answer is a clear error."""
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            yield conn
        except OSError as exc:
            raise DriverError(
                f"cannot reach the driver at {self.socket_path}: {exc} (is it running?)"
            ) from None
        finally:
            conn.close()

    def request(self, method: str, path: str, body=None):
        with self._connection(self.timeout) as conn:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload)
            response = conn.getresponse()
            data = response.read()
        decoded = json.loads(data) if data else {}
        if response.status >= 400:
            raise DriverError(decoded.get("Err") or f"HTTP {response.status}")
        return decoded

    def get(self, path: str):
        return self.request("GET", path)

    def stream(self, path: str):
        """JSON objects of a streaming GET, one per non-empty line, until the server stops."""
        with self._connection(None) as conn:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status >= 400:
                body = response.read()
                raise DriverError((json.loads(body) if body else {}).get("Err") or "failed")
            for line in response:
                if line.strip():
                    yield json.loads(line)
