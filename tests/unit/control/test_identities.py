"""Label filtering and identity allocation."""

import pytest

from driver.config import DEFAULT_LABEL_PREFIXES
from driver.control.identities import (
    FIRST_CIDR_IDENTITY,
    FIRST_ENDPOINT_IDENTITY,
    NETWORK_LABEL,
    Identities,
    LabelFilter,
    identity_labels,
)
from driver.control.state import Store


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    store.open()
    yield store
    store.close()


def test_default_filter_keeps_compose_service_but_not_per_replica_labels():
    labels = {
        "app": "web",
        "com.docker.compose.project": "shop",
        "com.docker.compose.service": "api",
        "com.docker.compose.container-number": "3",
        "com.docker.compose.config-hash": "abc",
        "org.opencontainers.image.title": "x",
    }
    assert LabelFilter(DEFAULT_LABEL_PREFIXES)(labels) == {
        "app": "web",
        "com.docker.compose.project": "shop",
        "com.docker.compose.service": "api",
    }


@pytest.mark.parametrize(
    ("spec", "kept"),
    [
        ("", {"app", "tier", "io.x"}),
        ("app", {"app"}),
        ("app,io.", {"app", "io.x"}),
        ("!tier", {"app", "io.x"}),
        ("app,tier,!tier", {"app"}),
    ],
)
def test_label_filter_includes_and_excludes_by_prefix(spec, kept):
    assert set(LabelFilter(spec)({"app": "1", "tier": "2", "io.x": "3"})) == kept


def test_network_name_is_part_of_the_identity():
    labels = identity_labels({"app": "web"}, "front", LabelFilter(""))
    assert labels == {"app": "web", NETWORK_LABEL: "front"}


def test_equal_labels_share_an_identity_and_numbers_are_not_reused_at_once(store):
    identities = Identities(store)
    with store.transaction():
        web = identities.for_labels({"app": "web"})
        again = identities.for_labels({"app": "web"})
        client = identities.for_labels({"app": "client"})
    assert web == again == FIRST_ENDPOINT_IDENTITY
    assert client == FIRST_ENDPOINT_IDENTITY + 1
    assert sorted(identities.collect_garbage()) == [web, client]
    with store.transaction():
        assert identities.for_labels({"app": "web"}) == FIRST_ENDPOINT_IDENTITY + 2


def test_cidr_identities_follow_the_policy(store):
    identities = Identities(store)
    first = identities.sync_cidrs({"10.0.0.0/8", "fd00::/64"})
    assert set(first) == {"10.0.0.0/8", "fd00::/64"}
    assert all(number >= FIRST_CIDR_IDENTITY for number in first.values())
    second = identities.sync_cidrs({"10.0.0.0/8"})
    assert second == {"10.0.0.0/8": first["10.0.0.0/8"]}
    assert [i.key for i in store.identities("cidr")] == ["cidr:10.0.0.0/8"]
