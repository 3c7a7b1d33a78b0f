"""libbpf, for what the running driver does with BPF objects: maps, the event ring, test
runs of loaded programs and XDP attachment.

bcc compiles and loads the programs (datapath.loader, in a short-lived child process); the
driver process itself only needs the thin bpf(2) wrappers of libbpf, which bcc's own library
also calls. Loading libbcc instead would map clang and LLVM into the driver (about 100 MiB of
resident memory) for no use after the compile.
"""

import ctypes as ct
import functools
import os

LIBRARY = "libbpf.so.1"
MAX_MAP_IDS = 64  # of a program's maps read; ours use about 30

RINGBUF_CALLBACK = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


class MapCreateOpts(ct.Structure):
    """struct bpf_map_create_opts, up to map_flags (libbpf takes the size from sz)."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("btf_fd", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("map_flags", ct.c_uint32),
    )


_PROTOTYPES = {
    "bpf_map_create": (
        [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.POINTER(MapCreateOpts)]
    ),
    "bpf_obj_get": [ct.c_char_p],
    "bpf_obj_pin": [ct.c_int, ct.c_char_p],
    "bpf_obj_get_info_by_fd": [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)],
    "bpf_map_lookup_elem": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_map_update_elem": [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64],
    "bpf_map_delete_elem": [ct.c_int, ct.c_void_p],
    "bpf_map_get_next_key": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_map_lookup_batch": (
        [ct.c_int] + [ct.c_void_p] * 4 + [ct.POINTER(ct.c_uint32), ct.c_void_p]
    ),
    "bpf_map_delete_batch": [ct.c_int, ct.c_char_p, ct.POINTER(ct.c_uint32), ct.c_void_p],
    "bpf_prog_test_run_opts": [ct.c_int, ct.c_void_p],
    "ring_buffer__new": [ct.c_int, RINGBUF_CALLBACK, ct.c_void_p, ct.c_void_p],
    "ring_buffer__poll": [ct.c_void_p, ct.c_int],
    "ring_buffer__consume": [ct.c_void_p],
    "ring_buffer__free": [ct.c_void_p],
    "libbpf_num_possible_cpus": [],
    "bpf_xdp_attach": [ct.c_int, ct.c_int, ct.c_uint32, ct.c_void_p],
    "bpf_xdp_detach": [ct.c_int, ct.c_uint32, ct.c_void_p],
    "bpf_prog_get_fd_by_id": [ct.c_uint32],
}


@functools.cache
def lib() -> ct.CDLL:
    """libbpf with the prototypes used here; loaded on first use, so importing needs no root."""
    loaded = ct.CDLL(LIBRARY, use_errno=True)
    for name, argtypes in _PROTOTYPES.items():
        function = getattr(loaded, name)
        function.argtypes = argtypes
        function.restype = ct.c_void_p if name == "ring_buffer__new" else ct.c_int
    return loaded


def errno_of(ret: int) -> int:
    """The error of a failed call: libbpf 1.x returns -errno and also sets errno."""
    return ct.get_errno() or -ret


class _InfoHead(ct.Structure):
    """What struct bpf_map_info and struct bpf_prog_info both begin with."""

    _fields_ = (("type", ct.c_uint32), ("id", ct.c_uint32))


def object_id(fd: int) -> int:
    """The kernel's id of the map or program behind fd; OSError if fd is neither."""
    info = _InfoHead()
    size = ct.c_uint32(ct.sizeof(info))
    ret = lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size))
    if ret < 0:
        err = errno_of(ret)
        raise OSError(err, os.strerror(err))
    return info.id


class _ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info, up to its name."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
    )


def program_map_ids(fd: int) -> set[int]:
    """The kernel ids of the maps the program behind fd uses; OSError if fd is none."""
    ids = (ct.c_uint32 * MAX_MAP_IDS)()
    info = _ProgInfo(nr_map_ids=MAX_MAP_IDS, map_ids=ct.addressof(ids))
    size = ct.c_uint32(ct.sizeof(info))
    ret = lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size))
    if ret < 0:
        err = errno_of(ret)
        raise OSError(err, os.strerror(err))
    return set(ids[: min(info.nr_map_ids, MAX_MAP_IDS)])
