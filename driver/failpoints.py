"""Named crash points for fault-injection tests: a deterministic `kill -9` in the middle of a call.

PYCILIUM_FAILPOINTS holds a comma-separated list of point names, read once, on the first
`hit()`. When the running code reaches an armed point, the whole service (gunicorn master and
worker: the process group) gets SIGKILL, exactly what `kill -9` of the service does. Unset
(always, outside tests), `hit()` is one set lookup.

Points, each at a spot where a crash could leave something half-done:
  create_network.before_commit     network stored and its routes added, not yet committed
  request_address.before_commit    address reserved, not yet committed
  create_endpoint.after_veth       veth, routes and map entries made, endpoint not committed
  delete_endpoint.after_datapath   veth and map entries removed, endpoint still in the state
  <Call>.before_reply              the call's work committed, its reply not yet sent, e.g.
                                   NetworkDriver.Join.before_reply (every plugin call has one)
"""

import functools
import os
import signal

ENVIRONMENT_VARIABLE = "PYCILIUM_FAILPOINTS"


@functools.cache
def armed() -> frozenset[str]:
    raw = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def hit(name: str) -> None:
    """Die here, the whole service at once, if the point `name` is armed."""
    if name in armed():
        os.killpg(os.getpgrp(), signal.SIGKILL)
