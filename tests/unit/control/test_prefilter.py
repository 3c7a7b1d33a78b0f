"""The XDP prefilter's control logic: the deny list and devices through the API, all or
nothing, kept in the state and made so again at a restart."""

import dataclasses

import pytest

from driver.server.app import create_app

from ..fakes import FakeDatapath


def test_update_lists_prefixes_with_their_drops_and_devices_with_their_mode(api, datapath):
    status, found = api(
        "PUT", "prefilter", {"cidrs": ["2001:db8::/32", "198.51.100.0/24"], "devices": ["eth1"]}
    )
    assert status == 200
    datapath.prefilter["198.51.100.0/24"] = 7
    _, found = api("GET", "prefilter")
    assert found == {
        "prefixes": [
            {"cidr": "198.51.100.0/24", "drops": 7},
            {"cidr": "2001:db8::/32", "drops": 0},
        ],
        "devices": [{"device": "eth1", "mode": "generic", "error": None}],
    }
    assert datapath.xdp == {"eth1": "generic"}


@pytest.mark.parametrize(
    "bad",
    ["198.51.100.1/24", "198.51.100.0/33", "2001:db8::/129", "nonsense", "", "10.0.0.0/8/8"],
)
def test_an_invalid_cidr_is_refused_and_changes_nothing(api, datapath, bad):
    api("PUT", "prefilter", {"cidrs": ["203.0.113.0/24"]})
    status, answer = api(
        "PUT", "prefilter", {"cidrs": ["198.51.100.0/25", bad], "devices": ["eth0"]}
    )
    assert status == 400
    assert repr(bad) in answer["Err"] and "nothing was changed" in answer["Err"]
    assert datapath.prefilter == {"203.0.113.0/24": 0}
    assert datapath.xdp == {}
    _, found = api("GET", "prefilter")
    assert [p["cidr"] for p in found["prefixes"]] == ["203.0.113.0/24"]


def test_a_device_the_datapath_refuses_undoes_the_whole_update(api, datapath):
    status, answer = api(
        "PUT", "prefilter", {"cidrs": ["198.51.100.0/24"], "devices": ["eth0", "nosuch0"]}
    )
    assert status == 500 and "nosuch0" in answer["Err"]
    assert (datapath.xdp, datapath.prefilter) == ({}, {})
    assert api("GET", "prefilter")[1] == {"prefixes": [], "devices": []}


@pytest.mark.parametrize(
    "body",
    [{}, {"cidrs": []}, {"cidrs": "198.51.100.0/24"}, {"devices": [3]}, {"cidrs": [None]}],
)
def test_update_needs_lists_of_strings(api, body):
    status, answer = api("PUT", "prefilter", body)
    assert status == 400, answer


def test_invalid_device_names_are_refused(api, datapath):
    status, answer = api("PUT", "prefilter", {"devices": ["a" * 16]})
    assert status == 400 and "device name" in answer["Err"]
    status, _ = api("PUT", "prefilter", {"devices": ["../eth0"]})
    assert status == 400
    assert datapath.xdp == {}


def test_delete_removes_prefixes_and_devices_and_refuses_what_is_not_there(api, client, datapath):
    api("PUT", "prefilter", {"cidrs": ["198.51.100.0/24", "2001:db8::/32"], "devices": ["eth0"]})
    response = client.delete("/v1/prefilter?cidr=198.51.100.0/24&cidr=203.0.113.0/24")
    assert response.status_code == 404
    assert "203.0.113.0/24" in response.get_json()["Err"]
    assert set(datapath.prefilter) == {"198.51.100.0/24", "2001:db8::/32"}
    response = client.delete("/v1/prefilter?cidr=198.51.100.0/24&device=eth0")
    assert response.status_code == 200
    assert response.get_json() == {
        "prefixes": [{"cidr": "2001:db8::/32", "drops": 0}],
        "devices": [],
    }
    assert (set(datapath.prefilter), datapath.xdp) == ({"2001:db8::/32"}, {})
    assert client.delete("/v1/prefilter").status_code == 400


def test_the_list_and_devices_survive_a_restart(config, api, app):
    api("PUT", "prefilter", {"cidrs": ["198.51.100.0/24"], "devices": ["eth0"]})
    app.extensions["pycilium"].close()
    fresh = FakeDatapath()
    fresh.xdp = {"eth1": "generic"}  # this instance's program on a device no longer named
    restarted = create_app(config, datapath=fresh, watch_docker=False)
    try:
        found = restarted.test_client().get("/v1/prefilter").get_json()
    finally:
        restarted.extensions["pycilium"].close()
    assert fresh.prefilter == {"198.51.100.0/24": 0}
    assert fresh.xdp == {"eth0": "native"}
    assert found["devices"] == [{"device": "eth0", "mode": "native", "error": None}]


def test_start_devices_join_the_saved_ones_and_a_missing_one_does_not_stop_the_driver(config):
    config = dataclasses.replace(config, prefilter_devices=("eth1", "gone0"))
    datapath = FakeDatapath()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        client = app.test_client()
        found = client.get("/v1/prefilter").get_json()
        status = client.get("/v1/status").get_json()
    finally:
        app.extensions["pycilium"].close()
    assert datapath.xdp == {"eth1": "generic"}
    devices = {d["device"]: d for d in found["devices"]}
    assert devices["eth1"]["mode"] == "generic"
    assert devices["gone0"]["mode"] is None and "gone0" in devices["gone0"]["error"]
    assert status["prefilter"]["devices"] == found["devices"]


def test_metrics_count_drops_per_listed_prefix_and_devices_per_mode(api, client, datapath):
    api("PUT", "prefilter", {"cidrs": ["198.51.100.0/24"], "devices": ["eth0"]})
    datapath.prefilter["198.51.100.0/24"] = 42
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'pycilium_prefilter_drop_packets_total{prefix="198.51.100.0/24"} 42.0' in scraped
    assert 'pycilium_prefilter_devices{mode="native"} 1.0' in scraped
    assert 'pycilium_prefilter_devices{mode="generic"} 0.0' in scraped
