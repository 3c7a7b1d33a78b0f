import json

import pytest

from driver.app import create_app
from driver.config import Config

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
