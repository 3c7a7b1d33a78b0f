"""ApiClient against a small HTTP server on a unix socket."""

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from driver.cli.client import API_SOCKET_ENV, DEFAULT_API_SOCKET, ApiClient, ApiError
from driver.config import Config, env_name

# path -> (status, body) the server answers to every method.
ROUTES = {
    "/v1/endpoints": (200, b'[{"numeric_id": 7}]'),
    "/v1/empty": (200, b""),
    "/v1/refused": (404, b'{"Err": "endpoint 9 not found"}'),
    "/v1/crashed": (502, b"<html>bad gateway</html>"),
    "/metrics": (200, b"pycilium_up 1\n"),
    "/v1/monitor": (200, b'{"kind": "drop"}\n\n{"kind": "trace"}\n'),
}


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.command, self.path, self.rfile.read(length)))
        status, body = ROUTES[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "api.sock")
    with socketserver.ThreadingUnixStreamServer(path, _Handler) as srv:
        srv.seen = []
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield path, srv.seen
        srv.shutdown()
        thread.join()


def test_request_sends_json_and_decodes_the_answer(server):
    path, seen = server
    client = ApiClient(path)
    assert client.get("/v1/endpoints") == [{"numeric_id": 7}]
    assert client.request("PUT", "/v1/empty", {"mode": "always"}) == {}
    assert seen == [("GET", "/v1/endpoints", b""), ("PUT", "/v1/empty", b'{"mode": "always"}')]


def test_a_refusal_is_an_api_error_with_the_drivers_message(server):
    client = ApiClient(server[0])
    with pytest.raises(ApiError, match=r"^endpoint 9 not found$"):
        client.request("DELETE", "/v1/refused")
    with pytest.raises(ApiError, match=r"^HTTP 502$"):
        client.get("/v1/crashed")
    with pytest.raises(ApiError, match=r"^endpoint 9 not found$"):
        list(client.stream("/v1/refused"))


def test_text_is_the_raw_body(server):
    assert ApiClient(server[0]).text("/metrics") == "pycilium_up 1\n"


def test_stream_yields_one_object_a_line(server):
    assert list(ApiClient(server[0]).stream("/v1/monitor")) == [
        {"kind": "drop"},
        {"kind": "trace"},
    ]


def test_a_driver_that_does_not_answer(tmp_path):
    client = ApiClient(str(tmp_path / "none.sock"))
    with pytest.raises(ApiError, match=r"cannot reach the driver at .*none.sock.*is it running"):
        client.get("/v1/status")
    with pytest.raises(ApiError, match="cannot reach the driver"):
        list(client.stream("/v1/monitor"))


def test_the_driver_and_the_client_agree_on_the_socket():
    assert Config().api_socket == DEFAULT_API_SOCKET == ApiClient().socket_path
    assert env_name("api_socket") == API_SOCKET_ENV


def test_bodies_are_json(server):
    path, seen = server
    ApiClient(path).request("PUT", "/v1/empty", {"text": "ü"})
    assert json.loads(seen[0][2]) == {"text": "ü"}
