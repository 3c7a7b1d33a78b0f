"""Map capacities are settings of the driver instance and reach the datapath."""

import pytest
from click.testing import CliRunner

from datapath import MapSizes
from driver.config import Config
from driver.control import plane as plane_module
from driver.server import app as app_module
from driver.server import main as service_module

from ..fakes import FakeDatapath


def test_config_defaults_are_the_datapath_defaults():
    config = Config()
    assert (config.policy_map_size, config.ct_map_size, config.service_map_size) == (
        MapSizes().policy,
        MapSizes().conntrack,
        MapSizes().services,
    )


def test_sizes_come_from_options_and_environment(monkeypatch):
    seen = []

    class Recorder:
        def __init__(self, config):
            seen.append(config)

        def run(self):
            pass

    monkeypatch.setattr(service_module, "DriverService", Recorder)
    result = CliRunner().invoke(
        service_module.main,
        ["--policy-map-size", "100", "--service-map-size", "32"],
        env={"CILIUM_CT_MAP_SIZE": "64"},
    )
    assert result.exit_code == 0, result.output
    assert (seen[0].policy_map_size, seen[0].ct_map_size, seen[0].service_map_size) == (
        100,
        64,
        32,
    )


@pytest.mark.parametrize("option", ["--policy-map-size", "--ct-map-size", "--service-map-size"])
@pytest.mark.parametrize("size", ["0", "15", str((1 << 24) + 1)])
def test_sizes_out_of_range_are_refused(option, size):
    result = CliRunner().invoke(service_module.main, [option, size])
    assert result.exit_code == 2
    assert "must be between 16 and 16777216" in result.output


def test_the_datapath_is_built_with_the_configured_sizes(monkeypatch, tmp_path):
    built = []

    def datapath(pin_dir, veth_prefix, sizes, nat64_prefix, service_mode, service_ranges):
        built.append((pin_dir, veth_prefix, sizes, nat64_prefix, service_mode, service_ranges))
        return FakeDatapath()

    monkeypatch.setattr(plane_module, "Datapath", datapath)
    config = Config(
        state_dir=str(tmp_path),
        node_id=7,
        policy_map_size=100,
        ct_map_size=64,
        service_map_size=32,
        service_mode="snat",
        service_range6="fdce:1c5e::/64",
        service_range4="10.95.0.0/16",
    ).validate()
    app = app_module.create_app(config, watch_docker=False)
    app.extensions["pycilium"].close()
    sizes = MapSizes(policy=100, conntrack=64, services=32)
    ranges = ("fdce:1c5e::/64", "10.95.0.0/16")
    assert built == [(config.bpf_pin_dir, "lxc", sizes, "64:ff9b::/96", "snat", ranges)]
