"""The flow sweeper's bookkeeping, over a stand-in for the maps (the real walk and delete are
tested on real maps in tests/datapath/test_map_walk.py and test_policy.py)."""

import ipaddress
import threading

import pytest

from datapath.errors import DatapathError
from datapath.sweeper import FlowSweeper

A6, A4 = ipaddress.ip_address("fdce:1c99::1"), ipaddress.ip_address("10.199.0.1")
B6 = ipaddress.ip_address("fdce:1c99::2")


class Maps:
    """Records sweeps; a sweep blocks while `gate` is clear, and fails while `failures` > 0."""

    def __init__(self, retired=None):
        self.records = dict(retired or {})
        self.sweeps = []
        self.gate = threading.Event()
        self.gate.set()
        self.walking = threading.Event()
        self.failures = 0
        self.full = False

    def retired(self):
        return dict(self.records)

    def put_retired(self, endpoint_id, addresses):
        if self.full:
            raise DatapathError("cannot update BPF map retired: Argument list too long")
        self.records[endpoint_id] = tuple(addresses)

    def delete_retired(self, endpoint_id):
        self.records.pop(endpoint_id, None)

    def delete_ct(self, endpoint_ids, addresses):
        self.walking.set()
        self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise DatapathError("map gone")
        self.sweeps.append((set(endpoint_ids), set(addresses)))
        return 0

    def delete_lb_flows(self, endpoint_ids=(), service_id=None):
        return 0


@pytest.fixture
def sweeper_of():
    made = []

    def make(maps):
        made.append(FlowSweeper(maps))
        return made[-1]

    yield make
    for sweeper in made:
        sweeper.close()


def test_retirements_queued_during_a_sweep_go_into_one_walk(sweeper_of):
    maps = Maps()
    maps.gate.clear()
    sweeper = sweeper_of(maps)
    sweeper.retire(1, [A6])
    assert maps.walking.wait(5)
    sweeper.retire(2, [B6])
    sweeper.retire(3, [A4])
    maps.gate.set()
    sweeper.wait_until_idle(5)
    assert maps.sweeps == [({1}, {A6}), ({2, 3}, {B6, A4})]
    assert maps.records == {}


def test_a_new_endpoint_waits_for_the_sweep_of_its_id_or_addresses(sweeper_of):
    maps = Maps()
    maps.gate.clear()
    sweeper = sweeper_of(maps)
    sweeper.retire(7, [A6, A4])
    sweeper.wait_until_swept(8, [B6], timeout=0)  # nothing in common: no wait
    for endpoint_id, addresses in ((7, [B6]), (9, [A4])):
        with pytest.raises(DatapathError, match=r"not swept within 0\.2 s"):
            sweeper.wait_until_swept(endpoint_id, addresses, timeout=0.2)
    maps.gate.set()
    sweeper.wait_until_swept(9, [A4], timeout=5)
    assert maps.sweeps == [({7}, {A6, A4})]


def test_a_failed_sweep_is_tried_again(sweeper_of, monkeypatch):
    monkeypatch.setattr("datapath.sweeper.RETRY_SECONDS", 0.01)
    maps = Maps()
    maps.failures = 2
    sweeper = sweeper_of(maps)
    sweeper.retire(4, [A6])
    sweeper.wait_until_idle(5)
    assert maps.sweeps == [({4}, {A6})]
    assert maps.records == {}


def test_retirements_left_by_a_previous_process_are_swept_at_start(sweeper_of):
    maps = Maps(retired={5: (A6,), 6: (B6, A4)})
    sweeper_of(maps).wait_until_idle(5)
    assert maps.sweeps == [({5, 6}, {A6, B6, A4})]
    assert maps.records == {}


def test_close_finishes_the_sweeps_asked_for():
    maps = Maps()
    maps.gate.clear()
    sweeper = FlowSweeper(maps)
    sweeper.retire(1, [A6])
    threading.Timer(0.1, maps.gate.set).start()
    sweeper.close()
    assert maps.sweeps == [({1}, {A6})]


def test_a_full_retired_map_does_not_stop_the_sweep(sweeper_of, caplog):
    maps = Maps()
    maps.full = True
    sweeper = sweeper_of(maps)
    sweeper.retire(3, [A6])
    sweeper.wait_until_idle(5)
    assert maps.sweeps == [({3}, {A6})]
    assert "retired without a pinned record" in caplog.text
