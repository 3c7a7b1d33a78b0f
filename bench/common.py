"""What both benchmark scripts need: the driver's management API, through the `cilium`
command's client, and best-effort commands for clean-up."""

import contextlib
import os
import subprocess

from driver.cli.client import API_SOCKET_ENV, DEFAULT_API_SOCKET, ApiClient

# Imports of thousands of rules may take minutes. The `cilium` command's variable names
# another instance's socket.
API = ApiClient(os.environ.get(API_SOCKET_ENV, DEFAULT_API_SOCKET), timeout=600)


def quiet(*args: str) -> None:
    """Best effort (cleanup): a failure or a hang does not stop the rest of the cleanup."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(args, capture_output=True, check=False, timeout=300)
