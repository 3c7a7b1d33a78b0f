"""Attaching the XDP prefilter to host devices, native where the device's driver can run
it and generic otherwise, and finding where it is attached.

Attaching goes through libbpf's bpf_xdp_attach (netlink underneath): pyroute2 0.7 encodes
IFLA_XDP_FLAGS as a big-endian 16-bit number, which the kernel reads as other flags, so
it cannot ask for a mode. Reading what is attached is a pyroute2 link dump.

A program is "ours" when it uses the instance's pinned prefilter4 map (its kernel id):
another driver instance, or another tool's XDP program, is never replaced or removed.
"""

import errno
import os
from dataclasses import dataclass

from . import libbpf, netlink
from .errors import DatapathError

XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
NATIVE = "native"
GENERIC = "generic"
OFFLOAD = "offload"
MODE_FLAGS = {NATIVE: XDP_FLAGS_DRV_MODE, GENERIC: XDP_FLAGS_SKB_MODE, OFFLOAD: XDP_FLAGS_HW_MODE}
# The per-mode program ids of IFLA_XDP, in the order a device's mode is named by.
MODE_ATTRS = (
    ("IFLA_XDP_DRV_PROG_ID", NATIVE),
    ("IFLA_XDP_SKB_PROG_ID", GENERIC),
    ("IFLA_XDP_HW_PROG_ID", OFFLOAD),
)


@dataclass(frozen=True)
class Attached:
    ifindex: int
    prog_id: int
    mode: str  # NATIVE, GENERIC or OFFLOAD


def attached_programs() -> dict[str, Attached]:
    """Device name -> the XDP program attached to it, for every device that has one."""
    found = {}
    for link in netlink.dump_links():
        xdp = link.get_attr("IFLA_XDP")
        for attr, mode in MODE_ATTRS if xdp else ():
            prog_id = xdp.get_attr(attr)
            if prog_id:
                found[link.get_attr("IFLA_IFNAME")] = Attached(link["index"], prog_id, mode)
                break
    return found


def program_map_ids(prog_id: int) -> set[int]:
    """The kernel ids of the maps program prog_id uses; empty if it is gone."""
    fd = libbpf.lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return set()
    try:
        return libbpf.program_map_ids(fd)
    except OSError as exc:
        raise DatapathError(f"cannot inspect BPF program {prog_id}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def attach(ifindex: int, prog_fd: int, mode: str) -> None:
    """Attach prog_fd to ifindex in mode, replacing a program attached in that mode."""
    ret = libbpf.lib().bpf_xdp_attach(ifindex, prog_fd, MODE_FLAGS[mode], None)
    if ret < 0:
        err = libbpf.errno_of(ret)
        raise DatapathError(
            f"cannot attach XDP program to ifindex {ifindex} ({mode}): {os.strerror(err)}"
        )


def detach(ifindex: int, mode: str) -> bool:
    """Remove the XDP program of ifindex attached in mode; False if the device is gone."""
    ret = libbpf.lib().bpf_xdp_detach(ifindex, MODE_FLAGS[mode], None)
    if ret < 0:
        err = libbpf.errno_of(ret)
        if err in (errno.ENODEV, errno.ENOENT):
            return False
        raise DatapathError(f"cannot detach XDP program from ifindex {ifindex}: {os.strerror(err)}")
    return True


def ours(map_id: int) -> dict[str, Attached]:
    """Device name -> attachment, of the devices whose XDP program uses map map_id."""
    return {
        name: found
        for name, found in attached_programs().items()
        if map_id in program_map_ids(found.prog_id)
    }


def detach_ours(map_id: int) -> list[str]:
    """Detach every XDP program that uses map map_id; the devices it left."""
    return [name for name, found in ours(map_id).items() if detach(found.ifindex, found.mode)]
