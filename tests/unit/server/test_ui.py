"""The service map page: its files, the pinned library, and the loopback server that
answers the page and its two read-only calls, nothing else."""

import base64
import hashlib
import io
import tarfile
import urllib.error
import urllib.request

import pytest

from driver.config import Config
from driver.server import uiassets
from driver.server.app import create_app

from ...ports import free_port
from .test_metrics import _get


def _status(client, path: str) -> int:
    with client.get(path) as reply:
        return reply.status_code


def test_the_page_and_its_files(client):
    assert _status(client, "/ui") == 302
    with client.get("/ui/") as page:
        assert page.status_code == 200 and b"/ui/vendor/cytoscape.min.js" in page.data
    assert _status(client, "/ui/servicemap.js") == 200
    assert _status(client, "/ui/servicemap.css") == 200
    assert _status(client, "/ui/nothing.js") == 404


def test_a_missing_library_says_how_to_fetch_it(tmp_path, datapath):
    config = Config(state_dir=str(tmp_path / "s"), node_id=3, ui_assets=str(tmp_path)).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        reply = app.test_client().get("/ui/vendor/cytoscape.min.js")
        assert reply.status_code == 404 and "driver.server.uiassets" in reply.get_json()["Err"]
    finally:
        app.extensions["pycilium"].close()


def test_the_library_from_the_assets_directory(tmp_path, datapath):
    assets = tmp_path / "ui"
    assets.mkdir()
    uiassets.path_in(assets).write_text("window.cytoscape = function () {};")
    config = Config(state_dir=str(tmp_path / "s"), node_id=3, ui_assets=str(assets)).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        with app.test_client().get("/ui/vendor/cytoscape.min.js") as reply:
            assert reply.status_code == 200 and reply.data.startswith(b"window.cytoscape")
    finally:
        app.extensions["pycilium"].close()


def _tarball(content: bytes) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        member = tarfile.TarInfo(uiassets.MEMBER)
        member.size = len(content)
        archive.addfile(member, io.BytesIO(content))
    return data.getvalue()


def test_integrity_is_checked_before_anything_is_kept():
    tarball = _tarball(b"lib")
    good = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    uiassets.check_integrity(tarball, good)
    assert uiassets.extract(tarball) == b"lib"
    with pytest.raises(ValueError, match="is not the pinned"):
        uiassets.check_integrity(tarball + b"x", good)


def test_fetch_keeps_the_pinned_build_once(tmp_path, monkeypatch):
    tarball = _tarball(b"lib")
    monkeypatch.setattr(
        uiassets,
        "INTEGRITY",
        "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode(),
    )
    source = tmp_path / "cytoscape.tgz"
    source.write_bytes(tarball)
    assert uiassets.fetch(tmp_path / "ui", source.as_uri())
    assert uiassets.path_in(tmp_path / "ui").read_bytes() == b"lib"
    assert not uiassets.fetch(tmp_path / "ui", source.as_uri())


def test_the_page_on_a_loopback_port_and_nothing_else(tmp_path, datapath):
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = Config(state_dir=str(tmp_path / "s"), node_id=9, ui_address=address).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        assert _get(f"http://{address}/ui/")[0] == 200
        status, _, text = _get(f"http://{address}/v1/servicemap")
        assert status == 200 and '"nodes"' in text
        assert _get(f"http://{address}/v1/flows?last=3")[0] == 200
        for path in ("/v1/status", "/metrics", "/Plugin.Activate", "/v1/flowsx"):
            assert _get(f"http://{address}{path}")[0] == 404, path
        flows = app.test_client().get("/v1/status").get_json()["flows"]
        assert flows == {"buffer": 4096, "seen": 0, "ui_address": address}
    finally:
        app.extensions["pycilium"].close()
    with pytest.raises(urllib.error.URLError):
        _get(f"http://{address}/ui/")


def test_the_loopback_port_refuses_other_host_names_and_streams(tmp_path, datapath):
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = Config(state_dir=str(tmp_path / "s"), node_id=9, ui_address=address).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        for host, status in [("rebound.example:%d", 403), ("localhost:%d", 200)]:
            request = urllib.request.Request(
                f"http://{address}/v1/servicemap", headers={"Host": host % port}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == status, host
            except urllib.error.HTTPError as exc:
                assert exc.code == status, host
        assert _get(f"http://{address}/v1/flows?follow=1")[0] == 400
    finally:
        app.extensions["pycilium"].close()


def test_a_taken_ui_port_fails_the_start_and_frees_the_metrics_port(tmp_path, datapath):
    metrics_port, ui_port = free_port(), free_port()
    config = Config(
        state_dir=str(tmp_path / "s"),
        node_id=9,
        metrics_address=f"127.0.0.1:{metrics_port}",
        ui_address=f"127.0.0.1:{ui_port}",
    ).validate()
    first = create_app(config, datapath=datapath, watch_docker=False)
    try:
        other = Config(
            state_dir=str(tmp_path / "o"), node_id=9, ui_address=f"127.0.0.1:{ui_port}"
        ).validate()
        with pytest.raises(OSError, match="cannot serve the service map"):
            create_app(other, datapath=datapath, watch_docker=False)
    finally:
        first.extensions["pycilium"].close()
