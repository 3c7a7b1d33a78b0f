"""The BPF filesystem that holds the pinned maps."""

import ctypes as ct
import os
from pathlib import Path

from .errors import DatapathError

BPFFS_ROOT = Path("/sys/fs/bpf")


def _bpf_mountpoints() -> list[Path]:
    with open("/proc/self/mounts") as mounts:
        fields = (line.split() for line in mounts)
        return [Path(f[1]) for f in fields if len(f) > 2 and f[2] == "bpf"]


def on_bpffs(path: Path) -> bool:
    return any(path == mp or mp in path.parents for mp in _bpf_mountpoints())


def ensure_pin_dir(pin_dir: Path) -> None:
    """Mount bpffs at /sys/fs/bpf if pin_dir is on no bpffs yet, then create pin_dir."""
    if not on_bpffs(pin_dir):
        if BPFFS_ROOT not in pin_dir.parents:
            raise DatapathError(f"{pin_dir} is not on a BPF filesystem (mount bpffs there)")
        libc = ct.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", bytes(BPFFS_ROOT), b"bpf", 0, None) != 0:
            err = ct.get_errno()
            raise DatapathError(f"cannot mount bpffs at {BPFFS_ROOT}: {os.strerror(err)}")
    try:
        pin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatapathError(f"cannot create {pin_dir}: {exc.strerror}") from exc
