import json

import pytest

from driver.config import Config
from driver.server.app import create_app

from .docker_calls import create_endpoint, join, make_ipam_network
from .fakes import FakeDatapath


@pytest.fixture
def datapath():
    return FakeDatapath()


@pytest.fixture
def config(tmp_path):
    return Config(state_dir=str(tmp_path / "state"), node_id=0x0A0B0C0D).validate()


@pytest.fixture
def app(config, datapath):
    app = create_app(config, datapath=datapath, watch_docker=False)
    yield app
    app.extensions["pycilium"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def post(client):
    """POST a JSON body the way Docker does: raw bytes, no Content-Type."""

    def call(path, body=None, raw=None):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        response = client.post("/" + path, data=data)
        return response.status_code, response.get_json(force=True)

    return call


@pytest.fixture
def api(client):
    def call(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        response = client.open("/v1/" + path, method=method, data=data)
        return response.status_code, response.get_json(force=True)

    return call


@pytest.fixture
def web_endpoint(post, app):
    """An endpoint on network 'app' whose container (labels app=web) the watcher found."""
    create_endpoint(post, make_ipam_network(post))
    join(post)
    return app.extensions["pycilium"]
