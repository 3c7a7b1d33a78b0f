"""Compiling the BPF programs (bcc) and attaching them to veths (tc, through pyroute2).

bpf_lxc.c is compiled once per driver process (by a child process, so the compiler's memory
goes with it), or reused from the previous process's pinned build (:class:`ProgramStore`),
into :class:`Programs`, whose two entry
functions are attached to every endpoint: ``from_container`` on tc ingress and
``to_container`` on tc egress of the host veth. Attaching uses ``replace`` so it is atomic
and idempotent, and a program stays attached after the process that loaded it exits.
bpf_xdp.c (the prefilter; datapath/xdp.py attaches it) is compiled the same way when a
device first needs it; bpf_overlay.c (the VXLAN device's programs, :class:`OverlayPrograms`)
when the tunnel is first enabled.
"""

import ctypes as ct
import errno
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import libbpf
from .abi import DEFAULT_SERVICE_RANGES
from .errors import DatapathError

BPF_DIR = Path(__file__).parent / "bpf"
LXC_SOURCE = BPF_DIR / "bpf_lxc.c"
XDP_SOURCE = BPF_DIR / "bpf_xdp.c"
OVERLAY_SOURCE = BPF_DIR / "bpf_overlay.c"
COMPILE_CHILD = Path(__file__).with_name("compile_child.py")
COMPILE_TIMEOUT = 300  # seconds; a compile takes about 5 on the 2-core test machines
COMPILE_ERROR_LINES = 20  # of the compiler's or verifier's output kept in an error
FROM_CONTAINER = "from_container"
TO_CONTAINER = "to_container"
XDP_PREFILTER = "xdp_prefilter"
FROM_OVERLAY = "from_overlay"
TO_OVERLAY = "to_overlay"
FROM_NETDEV = "from_netdev"

log = logging.getLogger(__name__)

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
FILTER_PRIO = 1
FILTER_HANDLE = 1
STAGING = "staging"  # what a ProgramStore's build is called while it is being pinned


DEFAULT_NAT64_PREFIX = "64:ff9b::/96"  # RFC 6052's well-known prefix


def nat64_prefix_words(prefix: str) -> list[int]:
    """The three leading 32-bit words of a NAT64 /96 (lib/nat64.h's NAT64_PREFIX_W0..W2);
    DatapathError for anything else."""
    try:
        net = ipaddress.IPv6Network(prefix)
    except ValueError as exc:
        raise DatapathError(f"NAT64 prefix {prefix!r} is not an IPv6 prefix: {exc}") from None
    if net.prefixlen != 96:
        raise DatapathError(f"NAT64 prefix {prefix} must be a /96")
    value = int(net.network_address) >> 32
    return [value >> 64 & 0xFFFFFFFF, value >> 32 & 0xFFFFFFFF, value & 0xFFFFFFFF]


def service_range_flags(service_ranges: tuple[str, str]) -> list[str]:
    """lib/lb.h's SERVICE6_W0..3 and SERVICE6_M0..3 (the IPv6 range's address and mask, as
    32-bit words) and SERVICE4_W and SERVICE4_M; DatapathError unless the ranges are an
    IPv6 and an IPv4 network, in that order."""
    nets = []
    for cidr, version in zip(service_ranges, (6, 4), strict=True):
        try:
            net = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise DatapathError(f"service range {cidr!r} is not a network: {exc}") from None
        if net.version != version:
            raise DatapathError(f"service range {cidr} must be IPv{version}")
        nets.append(net)
    range6, range4 = nets
    flags = []
    for i in range(4):
        shift = 96 - 32 * i
        flags.append(f"-DSERVICE6_W{i}={int(range6.network_address) >> shift & 0xFFFFFFFF:#x}")
        flags.append(f"-DSERVICE6_M{i}={int(range6.netmask) >> shift & 0xFFFFFFFF:#x}")
    flags.append(f"-DSERVICE4_W={int(range4.network_address):#x}")
    flags.append(f"-DSERVICE4_M={int(range4.netmask):#x}")
    return flags


def compile_cflags(
    map_fds: dict[str, int],
    nat64_prefix: str = DEFAULT_NAT64_PREFIX,
    service_ranges: tuple[str, str] = DEFAULT_SERVICE_RANGES,
) -> list[str]:
    """Compiler settings: the include path, one -D<NAME>_MAP_FD per map, the NAT64 prefix,
    the service ranges."""
    flags = [f"-I{BPF_DIR}"]
    flags += [f"-D{name.upper()}_MAP_FD={fd}" for name, fd in sorted(map_fds.items())]
    words = nat64_prefix_words(nat64_prefix)
    flags += [f"-DNAT64_PREFIX_W{i}={word:#x}" for i, word in enumerate(words)]
    return flags + service_range_flags(service_ranges)


@dataclass(frozen=True)
class Program:
    """A loaded entry function; its fd lives as long as the Programs it came from."""

    name: str
    fd: int


@dataclass
class Programs:
    """The entry functions of one compile; they stay loaded while their fds are open."""

    from_container: Program
    to_container: Program

    def close(self) -> None:
        for program in (self.from_container, self.to_container):
            os.close(program.fd)


def load_programs(
    map_fds: dict[str, int],
    nat64_prefix: str = DEFAULT_NAT64_PREFIX,
    service_ranges: tuple[str, str] = DEFAULT_SERVICE_RANGES,
    store: "ProgramStore | None" = None,
) -> Programs:
    """Compile bpf_lxc.c once with the given map fds (NAT64 prefix, service ranges) and load
    both entry functions; with a store, reuse what it holds for the same build."""
    functions = (FROM_CONTAINER, TO_CONTAINER)
    flags = compile_cflags(map_fds, nat64_prefix, service_ranges)
    fds = _load(store, LXC_SOURCE, functions, map_fds, flags)
    return Programs(Program(FROM_CONTAINER, fds[0]), Program(TO_CONTAINER, fds[1]))


@dataclass
class OverlayPrograms:
    """The entry functions of bpf_overlay.c: from_overlay on the VXLAN device's tc ingress,
    to_overlay on its egress, from_netdev on the underlay devices' ingress."""

    from_overlay: Program
    to_overlay: Program
    from_netdev: Program  # on the underlay devices' ingress, for direct server return

    def close(self) -> None:
        for program in (self.from_overlay, self.to_overlay, self.from_netdev):
            os.close(program.fd)


def load_overlay(
    map_fds: dict[str, int],
    nat64_prefix: str = DEFAULT_NAT64_PREFIX,
    service_ranges: tuple[str, str] = DEFAULT_SERVICE_RANGES,
    store: "ProgramStore | None" = None,
) -> OverlayPrograms:
    """Compile bpf_overlay.c with the given map fds (NAT64 prefix, service ranges) and load
    its entry functions; with a store, reuse what it holds for the same build."""
    functions = (FROM_OVERLAY, TO_OVERLAY, FROM_NETDEV)
    flags = compile_cflags(map_fds, nat64_prefix, service_ranges)
    fds = _load(store, OVERLAY_SOURCE, functions, map_fds, flags)
    return OverlayPrograms(*(Program(name, fd) for name, fd in zip(functions, fds, strict=True)))


def load_xdp(map_fds: dict[str, int], store: "ProgramStore | None" = None) -> Program:
    """Compile bpf_xdp.c with the given map fds and load its entry function as an XDP
    program (with a store, reuse what it holds for the same build); the caller closes its
    fd."""
    flags = compile_cflags(map_fds)
    (fd,) = _load(store, XDP_SOURCE, (f"{XDP_PREFILTER}:xdp",), map_fds, flags)
    return Program(XDP_PREFILTER, fd)


class ProgramStore:
    """Loaded programs pinned in a directory of the BPF filesystem, each build under a name
    made from what it was built from: the sources, the compiler settings, the kernel and the
    kernel ids of the maps it uses. A driver process that finds its build there (a restart
    with the same code, settings and pinned maps) reuses it: a compile takes seconds, this
    takes milliseconds. Counts both."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.compile_count = 0
        self.compile_seconds = 0.0  # compiling and loading, over every compile
        self.reuse_count = 0

    def load(
        self, source: Path, functions: tuple[str, ...], map_fds: dict[str, int], flags: list[str]
    ) -> list[int]:
        """The fds of functions of source: the stored build's, else compiled and stored."""
        build = self.directory / f"{source.stem}-{_build_name(source, functions, map_fds, flags)}"
        names = [function.partition(":")[0] for function in functions]
        fds = _open_pinned([build / name for name in names])
        if fds is not None:
            self.reuse_count += 1
        else:
            shutil.rmtree(build, ignore_errors=True)  # an incomplete build would stay so
            started = time.monotonic()
            fds = _compile(source, functions, map_fds, flags)
            self.compile_seconds += time.monotonic() - started
            self.compile_count += 1
            self._keep(source, build, dict(zip(names, fds, strict=True)))
        self._prune(source, build)
        return fds

    def _keep(self, source: Path, build: Path, fds: dict[str, int]) -> None:
        """Pin fds as build, whole or not at all: written aside, then renamed. (The BPF
        filesystem refuses names with a dot.) A failure costs the next start a compile,
        not this one its programs."""
        staging = self.directory / f"{STAGING}-{build.name}-{os.getpid()}"
        try:
            self.directory.mkdir(exist_ok=True)
            staging.mkdir()
            for name, fd in fds.items():
                if libbpf.lib().bpf_obj_pin(fd, os.fsencode(staging / name)) < 0:
                    err = libbpf.errno_of(-1)
                    raise OSError(err, os.strerror(err), str(staging / name))
            try:
                staging.rename(build)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # stored meanwhile
                    raise
        except OSError as exc:
            log.warning("%s is not kept for the next start, which compiles it: %s", source, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def prune_for_maps(self, map_fds: dict[str, int]) -> None:
        """Unpin every build whose programs use a map other than those of map_fds. A build
        is otherwise pruned only when its source is loaded again: one made for maps since
        recreated (the prefilter's, the tunnel's) would hold those old maps, and their
        memory, on a node that never loads that source again."""
        current = {libbpf.object_id(fd) for fd in map_fds.values()}
        for build in self.directory.glob("*"):
            if not build.is_dir():  # pinned there by something else: no build of ours
                build.unlink(missing_ok=True)
                continue
            try:
                used = _map_ids_of(build)
            except OSError as exc:  # gone meanwhile, or unreadable: a clean-up fails no start
                log.warning("unpinning %s, whose programs' maps cannot be read: %s", build, exc)
                used = None
            if used is None or not used <= current:
                shutil.rmtree(build, ignore_errors=True)

    def _prune(self, source: Path, build: Path) -> None:
        """Unpin the source's other builds, and what a process killed while pinning left
        aside; programs attached somewhere stay loaded without their pin."""
        for pattern in (f"{source.stem}-*", f"{STAGING}-{source.stem}-*"):
            for other in self.directory.glob(pattern):
                if other != build:
                    shutil.rmtree(other, ignore_errors=True)


def _build_name(
    source: Path, functions: tuple[str, ...], map_fds: dict[str, int], flags: list[str]
) -> str:
    """A digest of everything a build depends on. Map fds differ between processes, so the
    flags name each map by its kernel id (unique until reboot) instead."""
    fd_flags = {f"-D{name.upper()}_MAP_FD={fd}": name for name, fd in map_fds.items()}
    digest = hashlib.sha256()
    parts = [os.uname().release, source.name, *functions]
    for flag in flags:
        name = fd_flags.get(flag)
        parts.append(flag if name is None else f"{name}={libbpf.object_id(map_fds[name])}")
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in [COMPILE_CHILD, *sorted(BPF_DIR.rglob("*"))]:  # the child sets program types
        if path.is_file():
            name = str(path.relative_to(BPF_DIR.parent))
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:24]


def _open_pinned(paths: list[Path]) -> list[int] | None:
    """The fds of the programs pinned at paths, or None unless every one opens."""
    fds = []
    for path in paths:
        fd = libbpf.lib().bpf_obj_get(os.fsencode(path))
        if fd < 0:
            for opened in fds:
                os.close(opened)
            return None
        fds.append(fd)
    return fds


def _map_ids_of(build: Path) -> set[int] | None:
    """The ids of the maps used by the programs pinned in build; None unless all open."""
    fds = _open_pinned(sorted(build.iterdir()))
    if fds is None:
        return None
    try:
        return set().union(*map(libbpf.program_map_ids, fds))
    finally:
        for fd in fds:
            os.close(fd)


def _load(
    store: ProgramStore | None,
    source: Path,
    functions: tuple[str, ...],
    map_fds: dict[str, int],
    flags: list[str],
) -> list[int]:
    if store is None:
        return _compile(source, functions, map_fds, flags)
    return store.load(source, functions, map_fds, flags)


def _compile(
    source: Path, functions: tuple[str, ...], map_fds: dict[str, int], flags: list[str]
) -> list[int]:
    """The fds of functions of source, compiled with flags (naming the given map fds) and
    loaded.

    bcc compiles in a child process (compile_child.py) that inherits the map fds under the
    same numbers and hands the loaded programs' fds back over a socket pair.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        command = [sys.executable, str(COMPILE_CHILD), str(theirs.fileno()), str(source)]
        command += [*functions, "--", *flags]
        try:
            child = subprocess.run(
                command,
                pass_fds=(theirs.fileno(), *map_fds.values()),
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DatapathError(
                f"compiling {source.name} took more than {COMPILE_TIMEOUT} s"
            ) from None
        if child.returncode != 0:
            raise DatapathError(_compile_failure(child.stderr))
        ours.setblocking(False)
        try:
            _, fds, _, _ = socket.recv_fds(ours, 64, len(functions))
        except BlockingIOError:  # it exited without sending
            fds = []
    if len(fds) != len(functions):
        for fd in fds:
            os.close(fd)
        raise DatapathError(f"the compiler process of {source.name} sent no programs")
    return fds


def _compile_failure(stderr: str) -> str:
    """The child's own message (its last line) with the compiler's or verifier's output
    before it, shortened to what fits in a log line and an API error."""
    lines = stderr.strip().splitlines() or ["the compiler process failed without a message"]
    detail = "\n".join(lines[-COMPILE_ERROR_LINES - 1 : -1])
    return lines[-1] + (f"\n{detail}" if detail else "")


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


def ingress_program_ids(ifname: str) -> list[int]:
    """Kernel ids of the BPF programs on the ingress hook of device ifname (empty if none).
    Read from `tc`: pyroute2 does not decode a bpf filter's program id (TCA_BPF_ID)."""
    try:
        listing = subprocess.run(
            ["tc", "filter", "show", "dev", ifname, "ingress"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except OSError as exc:
        raise DatapathError(f"cannot run tc: {exc}") from exc
    return [int(found) for found in re.findall(r" bpf .* id (\d+)", listing)]


def detach_ingress(ifindex: int) -> None:
    """Remove the program attach_ingress put on ifindex (tests, uninstall)."""
    with IPRoute() as ipr:
        try:
            ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=TC_INGRESS, prio=FILTER_PRIO)
        except NetlinkError as exc:
            raise DatapathError(f"cannot detach BPF program from ifindex {ifindex}: {exc}") from exc


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
    ctx = ct.create_string_buffer(SKB_CTX_SIZE)
    ct.c_uint32.from_buffer(ctx, SKB_CTX_IFINDEX_OFF).value = ifindex
    ct.c_uint32.from_buffer(ctx, SKB_CTX_INGRESS_IFINDEX_OFF).value = ingress_ifindex
    return _test_run(program, frame, ctx)


def run_xdp(program: Program, frame: bytes) -> tuple[int, bytes]:
    """Run an XDP program once on an Ethernet frame of at least 14 bytes (the kernel's
    minimum for a test run). Returns the XDP verdict and the frame. Nothing is sent."""
    return _test_run(program, frame, None)


def _test_run(program: Program, frame: bytes, ctx) -> tuple[int, bytes]:
    data_in = ct.create_string_buffer(frame, len(frame))
    data_out = ct.create_string_buffer(len(frame) + 256)
    opts = _TestRunOpts(
        sz=ct.sizeof(_TestRunOpts),
        data_in=ct.addressof(data_in),
        data_out=ct.addressof(data_out),
        data_size_in=len(frame),
        data_size_out=len(data_out),
        ctx_in=None if ctx is None else ct.addressof(ctx),
        ctx_size_in=0 if ctx is None else len(ctx),
        repeat=1,
    )
    ret = libbpf.lib().bpf_prog_test_run_opts(program.fd, ct.byref(opts))
    if ret < 0:
        err = libbpf.errno_of(ret)
        raise DatapathError(f"test run of {program.name} failed: {os.strerror(err)}")
    return opts.retval, data_out.raw[: opts.data_size_out]
