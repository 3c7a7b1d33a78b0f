"""A policy saved by an earlier version that this version refuses (a meaning changed, see
docs/policy.md) stops the start with a message that says what to do, keeps the saved rules in
a file, and `saved_policy="discard"` starts without them."""

import json

import pytest

from driver.config import Config
from driver.control.identities import LabelFilter
from driver.control.regeneration import Regeneration
from driver.control.state import Store
from driver.errors import DriverError

from ..fakes import FakeDatapath

# `ingress: []` was default deny before; Cilium reads it as "no ingress section", so it is refused.
REFUSED = [{"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": []}]


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    store.open()
    with store.transaction():
        store.set_meta("policy_rules", json.dumps(REFUSED))
        store.set_meta("policy_revision", "7")
    yield store
    store.close()


def regeneration(store, saved_policy="load"):
    return Regeneration(store, FakeDatapath(), LabelFilter(""), "default", saved_policy)


def test_a_saved_policy_this_version_refuses_stops_the_start_and_is_kept(store, tmp_path):
    with pytest.raises(DriverError) as refused:
        regeneration(store)
    message = str(refused.value)
    kept = tmp_path / "refused-policy-r7.json"
    assert "revision 7" in message and "ingress" in message
    assert str(kept) in message and "--saved-policy discard" in message
    assert json.loads(kept.read_text()) == REFUSED


def test_discard_starts_without_the_refused_policy(store, tmp_path):
    started = regeneration(store, "discard")
    assert started.policy.rules() == []
    assert started.revision == 7
    assert json.loads((tmp_path / "refused-policy-r7.json").read_text()) == REFUSED


def test_the_setting_takes_only_load_or_discard():
    assert Config(saved_policy="discard").validate().saved_policy == "discard"
    with pytest.raises(ValueError, match="saved policy 'ignore' must be load or discard"):
        Config(saved_policy="ignore").validate()
