"""Compiling the BPF programs (bcc) and attaching them to veths (tc, through pyroute2).

bpf_lxc.c is compiled once per driver process into :class:`Programs`, whose two entry
functions are attached to every endpoint: ``from_container`` on tc ingress and
``to_container`` on tc egress of the host veth. Attaching uses ``replace`` so it is atomic
and idempotent, and a program stays attached after the process that loaded it exits.
"""

import ctypes as ct
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import DatapathError

BPF_DIR = Path(__file__).parent / "bpf"
LXC_SOURCE = BPF_DIR / "bpf_lxc.c"
FROM_CONTAINER = "from_container"
TO_CONTAINER = "to_container"

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
FILTER_PRIO = 1
FILTER_HANDLE = 1


def compile_cflags(map_fds: dict[str, int]) -> list[str]:
    """Compiler settings: the include path and one -D<NAME>_MAP_FD per map."""
    flags = [f"-I{BPF_DIR}"]
    flags += [f"-D{name.upper()}_MAP_FD={fd}" for name, fd in sorted(map_fds.items())]
    return flags


@dataclass(frozen=True)
class Program:
    """A loaded entry function; its fd lives as long as the Programs it came from."""

    name: str
    fd: int


@dataclass
class Programs:
    """The entry functions of one compile; keeps the bcc object (and so the fds) alive."""

    from_container: Program
    to_container: Program
    _bpf: object

    def close(self) -> None:
        self._bpf.cleanup()


def load_programs(map_fds: dict[str, int]) -> Programs:
    """Compile bpf_lxc.c once with the given map fds and load both entry functions."""
    from bcc import BPF  # bcc is imported lazily: importing this module needs no root

    try:
        bpf = BPF(src_file=str(LXC_SOURCE).encode(), cflags=compile_cflags(map_fds))
    except Exception as exc:
        raise DatapathError(f"compiling {LXC_SOURCE.name} failed: {exc}") from exc
    loaded = {}
    for function in (FROM_CONTAINER, TO_CONTAINER):
        try:
            fn = bpf.load_func(function.encode(), BPF.SCHED_CLS)
        except Exception as exc:
            bpf.cleanup()
            raise DatapathError(f"the kernel rejected BPF program {function}: {exc}") from exc
        loaded[function] = Program(name=function, fd=fn.fd)
    _return_compiler_heap()
    return Programs(loaded[FROM_CONTAINER], loaded[TO_CONTAINER], bpf)


def _return_compiler_heap() -> None:
    """Clang and LLVM free about 70 MiB of heap after a compile that glibc keeps for later;
    the driver compiles once and then runs for months, so give it back to the system."""
    ct.CDLL(None).malloc_trim(0)


def attach_ingress(ifindex: int, program: Program) -> None:
    """Attach program on the tc clsact ingress hook of ifindex (from the container)."""
    _attach(ifindex, program, TC_INGRESS)


def attach_egress(ifindex: int, program: Program) -> None:
    """Attach program on the tc clsact egress hook of ifindex (to the container)."""
    _attach(ifindex, program, TC_EGRESS)


def _attach(ifindex: int, program: Program, parent: str) -> None:
    """Attach program on one clsact hook of ifindex, replacing what is there."""
    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DatapathError(f"cannot add clsact qdisc to ifindex {ifindex}: {exc}") from exc
        try:
            ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                FILTER_HANDLE,
                fd=program.fd,
                name=program.name,
                parent=parent,
                prio=FILTER_PRIO,
                classid=1,
                direct_action=True,
            )
        except NetlinkError as exc:
            raise DatapathError(f"cannot attach BPF program to ifindex {ifindex}: {exc}") from exc


def ingress_program_names(ifindex: int) -> list[str]:
    """Names of the BPF programs on the ingress hook of ifindex (empty if none)."""
    return _program_names(ifindex, TC_INGRESS)


def egress_program_names(ifindex: int) -> list[str]:
    """Names of the BPF programs on the egress hook of ifindex (empty if none)."""
    return _program_names(ifindex, TC_EGRESS)


def _program_names(ifindex: int, parent: str) -> list[str]:
    with IPRoute() as ipr:
        try:
            filters = ipr.get_filters(ifindex, parent=parent)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.EINVAL, errno.ENOENT):
                return []
            raise
    names = []
    for flt in filters:
        options = flt.get_attr("TCA_OPTIONS")
        name = options.get_attr("TCA_BPF_NAME") if options else None
        if name:
            names.append(name)
    return names


class _TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf)."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    )


SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_CTX_INGRESS_IFINDEX_OFF = 36  # offsetof(struct __sk_buff, ingress_ifindex)
SKB_CTX_IFINDEX_OFF = 40  # offsetof(struct __sk_buff, ifindex)


def run_program(
    program: Program, frame: bytes, ifindex: int, ingress_ifindex: int = 0
) -> tuple[int, bytes]:
    """Run program once on an Ethernet frame as if received on ifindex (BPF_PROG_TEST_RUN),
    having first come in on ingress_ifindex (0: from nowhere in particular).

    Returns the TC verdict and the frame as the program left it. Nothing is sent.
    """
    from bcc.libbcc import lib

    lib.bpf_prog_test_run_opts.restype = ct.c_int
    lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]
    data_in = ct.create_string_buffer(frame, len(frame))
    data_out = ct.create_string_buffer(len(frame) + 256)
    ctx = ct.create_string_buffer(SKB_CTX_SIZE)
    ct.c_uint32.from_buffer(ctx, SKB_CTX_IFINDEX_OFF).value = ifindex
    ct.c_uint32.from_buffer(ctx, SKB_CTX_INGRESS_IFINDEX_OFF).value = ingress_ifindex
    opts = _TestRunOpts(
        sz=ct.sizeof(_TestRunOpts),
        data_in=ct.addressof(data_in),
        data_out=ct.addressof(data_out),
        data_size_in=len(frame),
        data_size_out=len(data_out),
        ctx_in=ct.addressof(ctx),
        ctx_size_in=SKB_CTX_SIZE,
        repeat=1,
    )
    ret = lib.bpf_prog_test_run_opts(program.fd, ct.byref(opts))
    if ret < 0:
        err = ct.get_errno() or -ret
        raise DatapathError(f"test run of {program.name} failed: {os.strerror(err)}")
    return opts.retval, data_out.raw[: opts.data_size_out]
