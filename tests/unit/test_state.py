"""The state database refuses layouts it does not know."""

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
