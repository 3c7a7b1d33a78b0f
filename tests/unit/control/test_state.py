"""The state database refuses layouts it does not know, and a locked or full database is a
clear error that changes nothing."""

import ipaddress
import os
import sqlite3
import time

import pytest

from driver.control import state
from driver.control.state import StateError, Store

from ..docker_calls import EP, NET, make_ipam_network, request_address


def test_a_database_with_another_layout_is_refused_at_open(tmp_path):
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE endpoints (endpoint_id TEXT PRIMARY KEY, network_id TEXT)")
    old.execute("PRAGMA user_version=1")
    old.close()
    with pytest.raises(StateError, match="table endpoints has columns"):
        Store(str(path)).open()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "state.db"
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version=99")
    newer.close()
    with pytest.raises(StateError, match="newer than this driver"):
        Store(str(path)).open()


def test_a_version_1_database_gains_the_outbound_column(tmp_path):
    """Networks made before outbound traffic was masqueraded get the default: masquerade."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    column = ",\n    outbound TEXT NOT NULL DEFAULT 'masquerade'"
    assert column in state.SCHEMA
    old.executescript(state.SCHEMA.replace(column, ""))
    old.execute(
        "INSERT INTO networks VALUES ('n1', '10.0.0.0/24', '10.0.0.1', NULL, NULL, 1, 1500, "
        "'[]', 'old')"
    )
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    store = Store(str(path))
    store.open()
    try:
        assert store.get_network("n1").outbound == "masquerade"
    finally:
        store.close()
    reopened = sqlite3.connect(path)
    assert reopened.execute("PRAGMA user_version").fetchone()[0] == state.SCHEMA_VERSION
    reopened.close()


def test_state_files_are_root_only(tmp_path):
    store = Store(str(tmp_path / "state" / "state.db"))
    store.open()
    try:
        with store.transaction():
            store.set_meta("k", "v")
        modes = {
            name: os.stat(tmp_path / "state" / name).st_mode & 0o777
            for name in os.listdir(tmp_path / "state")
        }
    finally:
        store.close()
    assert modes and all(mode & 0o077 == 0 for mode in modes.values()), modes
    assert os.stat(tmp_path / "state").st_mode & 0o077 == 0


@pytest.fixture
def config(config, monkeypatch):
    """The app's store waits 0.2 s for a lock instead of 5 s."""
    monkeypatch.setattr(state, "BUSY_TIMEOUT_MS", 200)
    return config


@pytest.fixture
def store(config):
    store = Store(config.state_db)
    store.open()
    yield store
    store.close()


def exclusive_lock(path):
    """Another process's writer: sqlite3 BEGIN EXCLUSIVE on the same file."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def test_a_write_under_another_process_lock_is_a_clear_error_then_succeeds(store, config):
    other = exclusive_lock(config.state_db)
    try:
        locked = r"is locked by another process \(held for 0.2 s or more\)"
        with pytest.raises(StateError, match=locked), store.transaction():
            store.set_meta("k", "v")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get_meta("k") is None
    with store.transaction():
        store.set_meta("k", "v")
    assert store.get_meta("k") == "v"


def test_writes_queued_behind_one_that_waited_for_a_lock_do_not_wait_again(store, config):
    """Docker's calls queue behind the control plane's lock: if each waited a full busy
    timeout, the tenth would answer after ten of them (a managed plugin's limit is 30 s)."""
    other = exclusive_lock(config.state_db)
    try:
        waits = []
        for _ in range(3):
            started = time.monotonic()
            with (
                pytest.raises(StateError, match="is locked by another process"),
                store.transaction(),
            ):
                store.set_meta("k", "v")
            waits.append(time.monotonic() - started)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert waits[0] >= 0.2 and max(waits[1:]) < 0.05, waits
    started = time.monotonic()
    with store.transaction():
        store.set_meta("k", "v")
    assert time.monotonic() - started < 0.05


def test_a_full_disk_is_a_clear_error_that_keeps_the_database_usable(store):
    with store.transaction():
        store.set_meta("kept", "1")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    full = r"no space left on device for state database .*; free space and retry"
    with pytest.raises(StateError, match=full), store.transaction():
        store.set_meta("small", "1")
        store.set_meta("big", "x" * 100_000)
    assert store.get_meta("small") is None
    store._db.execute("PRAGMA max_page_count=1073741823")
    with store.transaction():
        store.set_meta("big", "x" * 100_000)
    assert store.get_meta("kept") == "1"


def test_an_error_inside_a_transaction_rolls_back_and_passes_through(store):
    with pytest.raises(KeyError), store.transaction():
        store.set_meta("k", "v")
        raise KeyError("k")
    assert store.get_meta("k") is None


def test_plugin_calls_on_a_locked_database_answer_err_and_leave_nothing(post, app, datapath):
    pool4, pool6 = make_ipam_network(post)
    interface = {
        "Address": request_address(post, pool4),
        "AddressIPv6": request_address(post, pool6),
        "MacAddress": "",
    }
    body = {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}}
    store = app.extensions["pycilium"].store
    addresses = store.addresses()
    other = exclusive_lock(store.path)
    try:
        replies = [
            post("IpamDriver.RequestAddress", {"PoolID": pool4["PoolID"], "Address": ""}),
            post("NetworkDriver.CreateEndpoint", body),
        ]
    finally:
        other.execute("ROLLBACK")
        other.close()
    for status, reply in replies:
        assert status == 500
        assert reply["Err"].startswith(f"state database {store.path} is locked by another")
    assert store.addresses() == addresses
    assert store.get_endpoint(EP) is None
    assert datapath.endpoints == {}
    assert post("NetworkDriver.CreateEndpoint", body)[0] == 200
    assert [spec.ipv6 for spec in datapath.endpoints.values()] == [
        ipaddress.ip_interface(interface["AddressIPv6"]).ip
    ]
