"""The state database refuses layouts it does not know."""

import os
import sqlite3

import pytest

from driver.state import StateError, Store


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
