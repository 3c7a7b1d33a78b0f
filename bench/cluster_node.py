"""One simulated node of bench/cluster.py: the driver service exactly as `cilium-docker`
runs it (gunicorn, one worker, the same options), but over a datapath stand-in instead of
the kernel's: compiling and attaching BPF for 20 nodes would not fit on a small machine,
and the benchmark is about the state the nodes share. For benchmarks only.

The stand-in is the unit tests' in-memory fake (tests/unit/fakes.py, checked against
datapath.interface.DatapathApi) that also appends, with the time of CLOCK_MONOTONIC (one
clock for every process on the host), each ipcache write, each local endpoint's identity
and each identity newly allowed in an endpoint's policy (by a whole write or a delta) to
<state-dir>/datapath.jsonl: when this node enforced policy for a remote endpoint."""

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driver.server.main import DriverService, config_of, driver_options
from tests.unit.fakes import FakeDatapath

RECORD = "datapath.jsonl"


class RecordingDatapath(FakeDatapath):
    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def _write(self, record: dict) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.monotonic(), **record}) + "\n")

    def close(self):
        self._file.close()

    def ipcache_upsert(self, address, identity, node_address):
        super().ipcache_upsert(address, identity, node_address)
        self._write({"ipcache": address, "id": identity, "node": node_address})

    def ipcache_delete(self, address):
        super().ipcache_delete(address)
        self._write({"ipcache_delete": address})

    def set_endpoint_identity(self, spec, identity):
        super().set_endpoint_identity(spec, identity)
        self._write({"identity": spec.host_ifname, "id": identity})

    def set_endpoint_policy(self, spec, ingress_enforced, egress_enforced, keys):
        keys = set(keys)
        first = spec.host_ifname not in self.policies
        before = self.policies.get(spec.host_ifname, (0, 0, set()))[2]
        super().set_endpoint_policy(spec, ingress_enforced, egress_enforced, keys)
        new = {key.identity for key in keys} - {key.identity for key in before}
        # The first write too, even empty: from then on the endpoint must get every peer.
        if new or first:
            self._write({"policy": spec.host_ifname, "ids": sorted(new)})

    def update_endpoint_policy(self, spec, added, removed):
        added = set(added)
        super().update_endpoint_policy(spec, added, removed)
        # A delta adds an identity's keys when it comes: its first time in this endpoint's
        # policy (the analysis keeps the first time it sees a pair).
        if added:
            self._write({"policy": spec.host_ifname, "ids": sorted({k.identity for k in added})})


class BenchNode(DriverService):
    def load(self):
        from driver.server.app import create_app

        datapath = RecordingDatapath(os.path.join(self.config.state_dir, RECORD))
        self.app = create_app(self.config, datapath=datapath)
        return self.app


@click.command(context_settings={"show_default": True})
@driver_options
def main(**options):
    """The driver service over the recording datapath stand-in (benchmarks only)."""
    config = config_of(options)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.makedirs(config.state_dir, exist_ok=True)
    BenchNode(config).run()


if __name__ == "__main__":
    main()
