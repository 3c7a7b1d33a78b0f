"""One pinned BPF map: created and pinned on first use, reopened from its pin afterwards,
read and written through libbpf with the ctypes layouts of :mod:`datapath.abi`."""

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import libbpf
from ..errors import DatapathError

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
# Maps whose entries come and go (or, flow_counts, only come): their fill is reported.
COUNTABLE_MAP_TYPES = (
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PERCPU_HASH,
)
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_F_NO_PREALLOC = 1

BATCH_ENTRIES = 4096  # entries per batched map read
BATCH_TOKEN_SIZE = 64  # the kernel's resume token: a bucket index for hash maps


class _MapInfo(ct.Structure):
    """The head of struct bpf_map_info."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    )


@dataclass(frozen=True)
class MapSpec:
    name: str  # pinned file name and map name (<= 15 chars)
    map_type: int
    key: type | None  # None: no key (ring buffer)
    leaf: type | None
    max_entries: int
    flags: int = 0

    @property
    def key_size(self) -> int:
        return 0 if self.key is None else ct.sizeof(self.key)

    @property
    def leaf_size(self) -> int:
        return 0 if self.leaf is None else ct.sizeof(self.leaf)


def _errno(ret: int) -> int:
    return libbpf.errno_of(ret)


def _possible_cpus() -> int:
    return libbpf.lib().libbpf_num_possible_cpus()


def record(packed: bytes, size: int, index: int) -> bytes:
    """Record index of packed, a run of size-byte records back to back."""
    return packed[index * size : (index + 1) * size]


class PinnedMap:
    """One map, created and pinned on first use, reopened from its pin afterwards."""

    def __init__(self, spec: MapSpec, fd: int, path: Path):
        self.spec = spec
        self.fd = fd
        self.path = path
        self._lib = libbpf.lib()

    @classmethod
    def open(cls, pin_dir: Path, spec: MapSpec) -> "PinnedMap":
        lib = libbpf.lib()
        path = pin_dir / spec.name
        if path.exists():
            fd = lib.bpf_obj_get(os.fsencode(path))
            if fd < 0:
                raise DatapathError(f"cannot open pinned map {path}: {os.strerror(_errno(fd))}")
            pinned = cls(spec, fd, path)
            pinned._check_layout()
            return pinned
        opts = libbpf.MapCreateOpts(sz=ct.sizeof(libbpf.MapCreateOpts), map_flags=spec.flags)
        fd = lib.bpf_map_create(
            spec.map_type,
            spec.name.encode(),
            spec.key_size,
            spec.leaf_size,
            spec.max_entries,
            ct.byref(opts),
        )
        if fd < 0:
            raise DatapathError(f"cannot create BPF map {spec.name}: {os.strerror(_errno(fd))}")
        if lib.bpf_obj_pin(fd, os.fsencode(path)) < 0:
            err = _errno(-1)
            os.close(fd)
            raise DatapathError(f"cannot pin BPF map at {path}: {os.strerror(err)}")
        return cls(spec, fd, path)

    def _check_layout(self) -> None:
        info = _MapInfo()
        size = ct.c_uint32(ct.sizeof(info))
        if self._lib.bpf_obj_get_info_by_fd(self.fd, ct.byref(info), ct.byref(size)) < 0:
            raise DatapathError(f"cannot inspect pinned map {self.path}")
        want = (self.spec.map_type, self.spec.key_size, self.spec.leaf_size)
        have = (info.type, info.key_size, info.value_size)
        if want != have:
            self.close()
            raise DatapathError(
                f"pinned map {self.path} has another layout than this version expects "
                f"(type/key/value {have}, want {want}); remove it to have it recreated"
            )
        if info.max_entries != self.spec.max_entries:
            # Refused, not recreated: the programs attached to running containers keep using
            # the pinned map, and a fresh one would start empty (policy, flows, services).
            self.close()
            raise DatapathError(
                f"pinned map {self.path} holds {info.max_entries} entries, the configuration "
                f"says {self.spec.max_entries}: configure {info.max_entries} again, or stop "
                "the containers of this driver and remove the pinned map to have it recreated"
            )

    def map_id(self) -> int:
        """The kernel's id of the map: what a loaded program lists among the maps it uses."""
        try:
            return libbpf.object_id(self.fd)
        except OSError as exc:
            raise DatapathError(f"cannot inspect pinned map {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _leaf_buffer(self):
        if self.spec.map_type in (BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH):
            return (self.spec.leaf * _possible_cpus())()
        return self.spec.leaf()

    def lookup(self, key):
        leaf = self._leaf_buffer()
        if self._lib.bpf_map_lookup_elem(self.fd, ct.byref(key), ct.byref(leaf)) < 0:
            return None
        return leaf

    def update(self, key, leaf) -> None:
        if self._lib.bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(leaf), BPF_ANY) < 0:
            err = _errno(-1)
            raise DatapathError(f"cannot update BPF map {self.spec.name}: {os.strerror(err)}")

    def zero(self, key) -> None:
        """Set key's value to zeros, on every CPU of a per-CPU array."""
        self.update(key, self._leaf_buffer())

    def insert(self, key, leaf) -> bool:
        """Add key unless it is there (its value then stays); False if it was there."""
        if self._lib.bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(leaf), BPF_NOEXIST) == 0:
            return True
        err = _errno(-1)
        if err == errno.EEXIST:
            return False
        raise DatapathError(f"cannot add to BPF map {self.spec.name}: {os.strerror(err)}")

    def delete(self, key) -> bool:
        """Delete key; False if it was not there."""
        if self._lib.bpf_map_delete_elem(self.fd, ct.byref(key)) == 0:
            return True
        err = _errno(-1)
        if err == errno.ENOENT:
            return False
        raise DatapathError(f"cannot delete from BPF map {self.spec.name}: {os.strerror(err)}")

    def items(self) -> Iterator[tuple]:
        """Every (key, leaf) of a hash map; see _batches(). A per-CPU hash's leaf is the
        list of every CPU's value."""
        cpus = self._values_per_key()
        for keys, leaves, count in self._batches(reuse=False):
            if cpus == 1:
                yield from zip(keys[:count], leaves[:count], strict=True)
            else:
                for index in range(count):
                    yield keys[index], leaves[index * cpus : (index + 1) * cpus]

    def _values_per_key(self) -> int:
        return _possible_cpus() if self.spec.map_type == BPF_MAP_TYPE_PERCPU_HASH else 1

    def packed_items(self) -> Iterator[tuple[bytes, bytes]]:
        """The entries of a hash map as (keys, leaves) byte strings, count entries back to
        back in each, one pair per batch: for walks that match bytes instead of decoding."""
        for keys, leaves, count in self._batches(reuse=True):
            yield (
                ct.string_at(keys, count * self.spec.key_size),
                ct.string_at(leaves, count * self.spec.leaf_size),
            )

    def _batches(self, reuse: bool) -> Iterator[tuple]:
        """(keys, leaves, count) arrays, BATCH_ENTRIES per system call; with reuse, the same
        two arrays every time. Unlike a get_next_key walk, which starts over when the key it
        stands on is deleted (an LRU map evicts all the time), a batch walk goes bucket by
        bucket and ends."""
        token, following = (ct.create_string_buffer(BATCH_TOKEN_SIZE) for _ in range(2))
        start, keys, leaves = None, None, None
        while True:
            if keys is None or not reuse:
                keys = (self.spec.key * BATCH_ENTRIES)()
                leaves = (self.spec.leaf * (BATCH_ENTRIES * self._values_per_key()))()
            count = ct.c_uint32(BATCH_ENTRIES)
            ret = self._lib.bpf_map_lookup_batch(
                self.fd, start, following, keys, leaves, count, None
            )
            err = _errno(ret) if ret < 0 else 0
            yield keys, leaves, count.value
            if err == errno.ENOENT:
                return
            if err:
                raise DatapathError(f"cannot read BPF map {self.spec.name}: {os.strerror(err)}")
            ct.memmove(token, following, BATCH_TOKEN_SIZE)
            start = token

    def delete_packed(self, keys: bytes) -> int:
        """Delete the keys packed back to back in keys, in as few system calls as the kernel
        allows; keys already gone (an LRU map evicts) are skipped. Returns how many went."""
        size, deleted, offset = self.spec.key_size, 0, 0
        total = len(keys) // size
        while offset < total:
            count = ct.c_uint32(total - offset)
            rest = keys[offset * size :]
            ret = self._lib.bpf_map_delete_batch(self.fd, rest, ct.byref(count), None)
            deleted += count.value
            offset += count.value
            if ret < 0:
                err = _errno(ret)
                if err != errno.ENOENT:
                    raise DatapathError(
                        f"cannot delete from BPF map {self.spec.name}: {os.strerror(err)}"
                    )
                offset += 1
        return deleted

    def keys(self) -> Iterator:
        key = self.spec.key()
        if self._lib.bpf_map_get_next_key(self.fd, None, ct.byref(key)) < 0:
            return
        while True:
            yield key
            following = self.spec.key()
            if self._lib.bpf_map_get_next_key(self.fd, ct.byref(key), ct.byref(following)) < 0:
                return
            key = following


class MapSet:
    """Base of the typed accessors of one subject's maps (see :class:`DatapathMaps`)."""

    def __init__(self, maps: dict[str, PinnedMap]):
        self._maps = maps

    def _walk(self, name: str) -> Iterator[tuple]:
        """(key, leaf) of every entry of map name, by a key walk and one lookup per key."""
        pinned = self._maps[name]
        for key in list(pinned.keys()):
            leaf = pinned.lookup(key)
            if leaf is not None:
                yield key, leaf
