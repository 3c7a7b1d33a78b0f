"""Policy deltas: when peer identities come and go, each endpoint's map gets only the keys
they add or take away (update_endpoint_policy), and after any sequence of such changes, in
bursts of several at once, every endpoint holds exactly what a full recomputation gives."""

import random

import pytest

from driver.control.policy.model import NETWORK_LABEL

from .test_regeneration import POLICIES, Host
from .test_remote_identities import REMOTE, expected


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)
    yield host
    host.store.close()


VALUES = {
    "app": ["web", "db", "cache", "client"],
    "tier": ["front", "back"],
    "env": ["prod"],
    NETWORK_LABEL: ["a", "b"],
}


def random_remote(rng) -> dict:
    return {k: rng.choice(v) for k, v in VALUES.items() if k == "app" or rng.random() < 0.6}


def burst(rng, remote: dict[int, dict]) -> dict[int, dict]:
    """Up to five identities that came, went or (a number reused) mean other labels."""
    changed = dict(remote)
    for _ in range(rng.randint(1, 5)):
        number = REMOTE + rng.randrange(12)
        if number in changed and rng.random() < 0.7:
            del changed[number]
        else:
            changed[number] = random_remote(rng)
    return changed


@pytest.mark.parametrize("seed", range(30))
def test_deltas_over_bursts_of_identities_equal_a_full_recomputation(host, seed):
    rng = random.Random(seed)
    for text in rng.sample(POLICIES, rng.randint(1, len(POLICIES))):
        host.regeneration.import_rules([(text, "random.yaml")])
    for i in range(6):
        host.add(rng.choice("ab"), {**random_remote(rng), "replica": str(i)})
    remote: dict[int, dict] = {}
    deltas = 0
    for step in range(40):
        remote = burst(rng, remote)
        host.datapath.take()
        host.regeneration.set_remote(remote)
        calls = host.datapath.take()
        assert all(kind != "policy" for kind, _ in calls), "a remote identity rewrote a key set"
        deltas += sum(kind == "delta" for kind, _ in calls)
        assert host.datapath.policies == expected(host, remote), f"seed {seed} step {step}"
    assert deltas, "the sequence exercised no delta"
