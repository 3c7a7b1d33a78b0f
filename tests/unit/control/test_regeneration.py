"""Incremental policy regeneration: which endpoints an event rewrites, and that the result
always equals a recomputation of every endpoint from scratch."""

import random

import pytest

from datapath import DatapathError, PolicyKey
from driver.control.endpoints import spec_of
from driver.control.identities import LabelFilter
from driver.control.policy import Identity
from driver.control.policy.model import NETWORK_LABEL
from driver.control.regeneration import Regeneration
from driver.control.state import Endpoint, Store

from ..fakes import FakeDatapath

WEB_POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: ["name=web"]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"""


class CountingDatapath(FakeDatapath):
    """Records the calls that write endpoint state, in order; forgets a deleted endpoint's
    policy as the real datapath does."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def set_endpoint_policy(self, spec, ingress_enforced, egress_enforced, keys):
        super().set_endpoint_policy(spec, ingress_enforced, egress_enforced, keys)
        self.calls.append(("policy", spec.host_ifname))

    def update_endpoint_policy(self, spec, added, removed):
        super().update_endpoint_policy(spec, added, removed)
        self.calls.append(("delta", spec.host_ifname))

    def set_endpoint_identity(self, spec, identity):
        super().set_endpoint_identity(spec, identity)
        self.calls.append(("identity", spec.host_ifname))

    def set_cidr_identities(self, mapping):
        super().set_cidr_identities(mapping)
        self.calls.append(("cidr", None))

    def delete_endpoint(self, spec):
        super().delete_endpoint(spec)
        self.policies.pop(spec.host_ifname, None)
        self.identities.pop(spec.host_ifname, None)

    def take(self):
        calls, self.calls = self.calls, []
        return calls


class Host:
    """Endpoints in a real state store, as the plugin calls and the watcher leave them."""

    def __init__(self, tmp_path):
        self.store = Store(str(tmp_path / "state.db"))
        self.store.open()
        self.datapath = CountingDatapath()
        self.regeneration = Regeneration(self.store, self.datapath, LabelFilter(""), "default")
        self.regeneration.refresh()
        self.count = 0

    def add(self, network: str, labels: dict, sandbox: str | None = None) -> str:
        self.count += 1
        endpoint_id = f"{self.count:012x}" + "0" * 52
        ep = Endpoint(
            endpoint_id=endpoint_id,
            network_id="net-" + network,
            numeric_id=self.count,
            host_ifname="lxc" + endpoint_id[:12],
            peer_ifname="tmp" + endpoint_id[:12],
            mac="02:00:00:00:00:01",
            ipv6=f"fd00::{self.count:x}",
            ipv4=None,
            router6="fd00::1",
            router4=None,
            mtu=1500,
            returned={},
        )
        with self.store.transaction():
            self.store.add_endpoint(ep)
            self.store.set_sandbox(endpoint_id, sandbox or f"/run/netns/{self.count}")
        self.datapath.create_endpoint(spec_of(ep))
        self.assign(endpoint_id, labels)
        return endpoint_id

    def assign(self, endpoint_id: str, labels: dict) -> None:
        ep = self.store.get_endpoint(endpoint_id)
        network = ep.network_id.removeprefix("net-")
        self.regeneration.assign_container(ep, network, "c" * 64, "name", labels)

    def remove(self, endpoint_id: str) -> None:
        """What ControlPlane.delete_endpoint does."""
        ep = self.store.get_endpoint(endpoint_id)
        self.datapath.delete_endpoint(spec_of(ep))
        with self.store.transaction():
            self.store.delete_endpoint(endpoint_id)
        self.regeneration.refresh()

    def ifname(self, endpoint_id: str) -> str:
        return "lxc" + endpoint_id[:12]

    def expected(self) -> dict:
        """Every endpoint's policy computed from scratch, as the driver did before."""
        known = [Identity(i.identity, i.labels) for i in self.store.identities("endpoint")]
        cidrs = {i.labels["cidr"]: i.identity for i in self.store.identities("cidr")}
        found = {}
        for ep in self.store.endpoints():
            if ep.identity == 3:
                continue
            result = self.regeneration.policy.compute(
                Identity(ep.identity, ep.labels),
                known,
                cidrs,
                self.regeneration.mode,
            )
            keys = {PolicyKey(k.identity, k.dport, k.protocol, k.direction) for k in result.keys}
            found[ep.host_ifname] = (result.ingress_enforced, result.egress_enforced, keys)
        return found


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)
    yield host
    host.store.close()


def policy_writes(calls) -> list[str]:
    """The endpoints whose policy was written, whole or by a delta."""
    return [name for kind, name in calls if kind in ("policy", "delta")]


def test_a_new_identity_nobody_selects_writes_only_its_own_endpoint(host):
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    for i in range(100):
        host.add("a", {"app": "web", "replica": str(i)})
    host.datapath.take()
    newcomer = host.add("b", {"app": "db"})
    calls = host.datapath.take()
    assert policy_writes(calls) == [host.ifname(newcomer)]
    # Its policy is in place before it leaves the waiting state.
    assert calls == [("policy", host.ifname(newcomer)), ("identity", host.ifname(newcomer))]
    assert host.datapath.policies == host.expected()


def test_joining_an_existing_identity_writes_only_the_joining_endpoint(host):
    for _ in range(100):
        host.add("a", {"app": "web"})
    host.datapath.take()
    newcomer = host.add("a", {"app": "web"})
    assert policy_writes(host.datapath.take()) == [host.ifname(newcomer)]
    assert host.datapath.policies == host.expected()


def test_a_new_identity_is_written_to_the_endpoints_that_select_it_first(host):
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    web = [host.add("a", {"app": "web", "replica": str(i)}) for i in range(10)]
    for i in range(90):
        host.add("b", {"app": "other", "replica": str(i)})
    host.datapath.take()
    client = host.add("c", {"app": "client"})
    calls = host.datapath.take()
    assert sorted(policy_writes(calls)) == sorted(map(host.ifname, [*web, client]))
    # The peers get the new identity's keys alone, not their whole key set again.
    assert sorted(name for kind, name in calls if kind == "delta") == sorted(map(host.ifname, web))
    # Peers learn the new identity before its traffic can flow.
    assert calls[-1] == ("identity", host.ifname(client))
    assert host.datapath.policies == host.expected()


def test_removing_an_endpoint_writes_only_those_that_lose_its_identity(host):
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    web = [host.add("a", {"app": "web", "replica": str(i)}) for i in range(10)]
    for i in range(90):
        host.add("b", {"app": "other", "replica": str(i)})
    clients = [host.add("c", {"app": "client"}) for _ in range(2)]
    host.datapath.take()
    host.remove(clients[0])  # its identity stays: the other client has it
    assert host.datapath.take() == []
    host.remove(clients[1])
    assert sorted(policy_writes(host.datapath.take())) == sorted(map(host.ifname, web))
    assert host.datapath.policies == host.expected()


def test_a_policy_change_writes_only_endpoints_whose_policy_changes(host):
    web = [host.add("a", {"app": "web", "replica": str(i)}) for i in range(10)]
    for i in range(90):
        host.add("b", {"app": "other", "replica": str(i)})
    host.datapath.take()
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    assert sorted(policy_writes(host.datapath.take())) == sorted(map(host.ifname, web))
    host.regeneration.set_mode("default")
    assert host.datapath.take() == []
    assert host.datapath.policies == host.expected()


def test_a_policy_change_recomputes_only_endpoints_a_changed_rule_selects(host, monkeypatch):
    """With thousands of rules in force, a small import must not recompute every endpoint."""
    others = "\n".join(
        f"- {{endpointSelector: {{matchLabels: {{replica: '{i}'}}}}, labels: [name=r{i}],"
        " ingress: [{fromEndpoints: [{}]}]}"
        for i in range(90)
    )
    host.regeneration.import_rules([(others, "others.yaml")])
    for i in range(10):
        host.add("a", {"app": "web", "replica": f"web{i}"})
    for i in range(90):
        host.add("b", {"app": "other", "replica": str(i)})
    computed = []
    compute_for = type(host.regeneration.policy).compute_for

    def counting(policy, identity, peers, mode="default"):
        computed.append(identity.labels["replica"])
        return compute_for(policy, identity, peers, mode)

    monkeypatch.setattr(type(host.regeneration.policy), "compute_for", counting)
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    assert sorted(computed) == [f"web{i}" for i in range(10)]
    assert host.datapath.policies == host.expected()


def test_an_identity_the_datapath_refused_is_assigned_again_on_the_retry(host, monkeypatch):
    """The store took the new identity before the datapath refused it (a full map): the
    watcher's retry found nothing to change, and the endpoint stayed waiting for good."""
    endpoint_id = host.add("a", {"app": "web"})
    refused = DatapathError("policy map is full")
    real = host.datapath.set_endpoint_identity

    def refuse(spec, identity):
        raise refused

    monkeypatch.setattr(host.datapath, "set_endpoint_identity", refuse)
    with pytest.raises(DatapathError):
        host.assign(endpoint_id, {"app": "db"})
    before = host.store.get_endpoint(endpoint_id)
    assert before.labels == {"app": "web", NETWORK_LABEL: "a"}
    monkeypatch.setattr(host.datapath, "set_endpoint_identity", real)
    host.assign(endpoint_id, {"app": "db"})
    after = host.store.get_endpoint(endpoint_id)
    assert after.identity != before.identity
    assert host.datapath.identities[host.ifname(endpoint_id)] == after.identity
    assert host.datapath.policies == host.expected()


def test_unchanged_host_addresses_are_not_rewritten(host):
    host.add("a", {"app": "web"})
    host.datapath.take()
    host.add("a", {"app": "db"})
    assert ("cidr", None) not in host.datapath.take()
    host.datapath.host_ips.append("192.0.2.3")
    host.add("a", {"app": "cache"})
    assert ("cidr", None) in host.datapath.take()
    assert host.datapath.cidr_identities["192.0.2.3/32"] == 1


POLICIES = [
    WEB_POLICY,
    """
- endpointSelector: {matchLabels: {app: db}}
  labels: ["name=db"]
  ingress:
  - fromEndpoints: [{matchLabels: {tier: back}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}]
  - toCIDR: ["192.0.2.0/24"]
""",
    """
- endpointSelector: {matchExpressions: [{key: tier, operator: Exists}]}
  labels: ["name=tiers"]
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
""",
    """
- endpointSelector: {matchLabels: {app: cache}}
  labels: ["name=cache"]
  ingress:
  - fromEntities: [cluster]
  egress:
  - toEntities: [world]
  - toCIDRSet: [{cidr: "198.51.100.0/24", except: ["198.51.100.128/25"]}]
""",
    """
- endpointSelector: {}
  labels: ["name=everyone"]
  egress:
  - toEndpoints: [{matchLabels: {io.pycilium.network: a}}]
  - toEntities: [host]
""",
]
LABELS = {"app": ["web", "db", "cache", "client"], "tier": ["front", "back"], "env": ["prod"]}
NAMES = ["web", "db", "tiers", "cache", "everyone"]


def random_labels(rng) -> dict:
    return {key: rng.choice(values) for key, values in LABELS.items() if rng.random() < 0.6}


def random_step(host, rng) -> str:
    endpoints = host.store.endpoints()
    action = rng.choice(["add", "add", "add", "join", "remove", "relabel", "leave", "policy"])
    if action == "add" or not endpoints:
        action = "add"
        host.add(rng.choice("ab"), random_labels(rng))
    elif action == "join":
        # The same container on a second network: a network mate of the first.
        ep = rng.choice(endpoints)
        other = "b" if ep.network_id == "net-a" else "a"
        host.add(other, random_labels(rng), sandbox=ep.sandbox_key)
    elif action == "remove":
        host.remove(rng.choice(endpoints).endpoint_id)
    elif action == "relabel":
        host.assign(rng.choice(endpoints).endpoint_id, random_labels(rng))
    elif action == "leave":
        ep = rng.choice(endpoints)
        with host.store.transaction():
            host.store.set_sandbox(ep.endpoint_id, None)
    else:
        change = rng.choice(["import", "import", "delete", "delete-all", "mode"])
        if change == "import":
            host.regeneration.import_rules([(rng.choice(POLICIES), "random.yaml")])
        elif change == "delete" and host.regeneration.policy.rules():
            labels = {v for r in host.regeneration.policy.rules() for _, v in r.labels}
            host.regeneration.delete_rules(rng.choice(sorted(labels)), False)
        elif change == "delete-all":
            host.regeneration.delete_rules(None, True)
        else:
            host.regeneration.set_mode(rng.choice(["default", "always", "never"]))
    return action


@pytest.mark.parametrize("seed", range(12))
def test_incremental_result_equals_a_full_recomputation(host, seed):
    rng = random.Random(seed)
    for step in range(60):
        random_step(host, rng)
        assert host.datapath.policies == host.expected(), f"seed {seed} step {step}"


def test_a_container_on_two_networks_lets_no_one_else_across(host):
    """Networks are isolated as on Docker's bridges: a container on networks a and b reaches
    both through its own interfaces, but a peer that is only on b (here with the same labels,
    so the same identity as the container's b endpoint) gets no way into network a."""
    sandbox = "/run/netns/both"
    on_a = host.add("a", {}, sandbox=sandbox)
    on_b = host.add("b", {}, sandbox=sandbox)
    only_a = host.add("a", {"app": "db"})
    only_b = host.add("b", {})
    identity = {ep: host.store.get_endpoint(ep).identity for ep in (on_a, on_b, only_a, only_b)}
    assert identity[on_b] == identity[only_b]
    admitted = {k.identity for k in host.datapath.policies[host.ifname(only_a)][2]}
    assert identity[on_a] in admitted
    assert identity[only_b] not in admitted
