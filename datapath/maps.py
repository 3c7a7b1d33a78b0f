"""The pinned BPF maps, and the only code that touches them.

Maps are created and pinned here (not by the C compile), so their file descriptors exist
before the program is compiled: lib/maps.h references them as ``-D<NAME>_MAP_FD``. A new
driver process opens the same pinned maps, so entries survive restarts.

Callers get typed values (:class:`EndpointEntry`, :class:`AddressEntry`); the ctypes
``Key``/``Leaf`` classes mirror the structs of ``bpf/lib/common.h``.
"""

import ctypes as ct
import errno
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import reasons
from .errors import DatapathError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_ANY = 0

ENDPOINT_KEY_IPV4 = 1
ENDPOINT_KEY_IPV6 = 2

IP6 = ct.c_uint8 * 16
IP4 = ct.c_uint8 * 4
MAC = ct.c_uint8 * 6


class EndpointInfo(ct.Structure):
    """Leaf of the endpoints map (struct endpoint_info)."""

    _fields_ = (
        ("ipv6", IP6),
        ("router6", IP6),
        ("ipv4", IP4),
        ("router4", IP4),
        ("mac", MAC),
        ("node_mac", MAC),
        ("endpoint_id", ct.c_uint16),
        ("flags", ct.c_uint16),
    )


class EndpointKey(ct.Structure):
    """Key of the endpoint_addrs map (struct endpoint_key)."""

    _fields_ = (("ip", IP6), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3))


class EndpointAddr(ct.Structure):
    """Leaf of the endpoint_addrs map (struct endpoint_addr)."""

    _fields_ = (("ifindex", ct.c_uint32), ("endpoint_id", ct.c_uint16), ("pad", ct.c_uint16))


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


def _mac_bytes(mac: str) -> MAC:
    return MAC(*bytes.fromhex(mac.replace(":", "")))


def _mac_str(raw: MAC) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip4_or_none(raw: IP4) -> ipaddress.IPv4Address | None:
    addr = ipaddress.IPv4Address(bytes(raw))
    return None if int(addr) == 0 else addr


@dataclass(frozen=True)
class EndpointEntry:
    """A decoded endpoints map entry."""

    endpoint_id: int
    mac: str
    node_mac: str
    ipv6: ipaddress.IPv6Address
    ipv4: ipaddress.IPv4Address | None
    router6: ipaddress.IPv6Address
    router4: ipaddress.IPv4Address | None
    flags: int = 0

    def to_leaf(self) -> EndpointInfo:
        zero4 = ipaddress.IPv4Address(0)
        return EndpointInfo(
            ipv6=IP6(*self.ipv6.packed),
            router6=IP6(*self.router6.packed),
            ipv4=IP4(*(self.ipv4 or zero4).packed),
            router4=IP4(*(self.router4 or zero4).packed),
            mac=_mac_bytes(self.mac),
            node_mac=_mac_bytes(self.node_mac),
            endpoint_id=self.endpoint_id,
            flags=self.flags,
        )

    @classmethod
    def from_leaf(cls, leaf: EndpointInfo) -> "EndpointEntry":
        return cls(
            endpoint_id=leaf.endpoint_id,
            mac=_mac_str(leaf.mac),
            node_mac=_mac_str(leaf.node_mac),
            ipv6=ipaddress.IPv6Address(bytes(leaf.ipv6)),
            ipv4=_ip4_or_none(leaf.ipv4),
            router6=ipaddress.IPv6Address(bytes(leaf.router6)),
            router4=_ip4_or_none(leaf.router4),
            flags=leaf.flags,
        )


@dataclass(frozen=True)
class AddressEntry:
    """A decoded endpoint_addrs entry: which local endpoint owns an address."""

    ifindex: int
    endpoint_id: int


def _address_key(ip: IPAddress) -> EndpointKey:
    if ip.version == 6:
        return EndpointKey(ip=IP6(*ip.packed), family=ENDPOINT_KEY_IPV6)
    return EndpointKey(ip=IP6(*ip.packed), family=ENDPOINT_KEY_IPV4)


def _address_from_key(key: EndpointKey) -> IPAddress:
    raw = bytes(key.ip)
    if key.family == ENDPOINT_KEY_IPV6:
        return ipaddress.IPv6Address(raw)
    return ipaddress.IPv4Address(raw[:4])


@dataclass(frozen=True)
class MapSpec:
    name: str  # pinned file name and map name (<= 15 chars)
    map_type: int
    key: type
    leaf: type
    max_entries: int


def map_specs() -> tuple[MapSpec, ...]:
    """Every map of the datapath. lib/maps.h expects -D<NAME>_MAP_FD for each."""
    return (
        MapSpec("endpoints", BPF_MAP_TYPE_HASH, ct.c_uint32, EndpointInfo, 16384),
        MapSpec("endpoint_addrs", BPF_MAP_TYPE_HASH, EndpointKey, EndpointAddr, 32768),
        MapSpec(
            "drop_counts",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            ct.c_uint32,
            ct.c_uint64,
            reasons.drop_reason_max(),
        ),
        MapSpec(
            "trace_counts",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            ct.c_uint32,
            ct.c_uint64,
            reasons.trace_point_max(),
        ),
    )


def _libbcc():
    """libbcc with the prototypes used here; imported lazily so importing works anywhere."""
    from bcc.libbcc import lib

    lib.bcc_create_map.restype = ct.c_int
    lib.bcc_create_map.argtypes = [ct.c_int, ct.c_char_p] + [ct.c_int] * 4
    lib.bpf_obj_get.restype = ct.c_int
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    lib.bpf_obj_pin.restype = ct.c_int
    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_obj_get_info.restype = ct.c_int
    lib.bpf_obj_get_info.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    return lib


def _errno(ret: int) -> int:
    return ct.get_errno() or -ret


def _possible_cpus() -> int:
    from bcc.utils import get_possible_cpus

    return len(get_possible_cpus())


class PinnedMap:
    """One map, created and pinned on first use, reopened from its pin afterwards."""

    def __init__(self, spec: MapSpec, fd: int, path: Path):
        self.spec = spec
        self.fd = fd
        self.path = path
        self._lib = _libbcc()

    @classmethod
    def open(cls, pin_dir: Path, spec: MapSpec) -> "PinnedMap":
        lib = _libbcc()
        path = pin_dir / spec.name
        if path.exists():
            fd = lib.bpf_obj_get(os.fsencode(path))
            if fd < 0:
                raise DatapathError(f"cannot open pinned map {path}: {os.strerror(_errno(fd))}")
            pinned = cls(spec, fd, path)
            pinned._check_layout()
            return pinned
        fd = lib.bcc_create_map(
            spec.map_type,
            spec.name.encode(),
            ct.sizeof(spec.key),
            ct.sizeof(spec.leaf),
            spec.max_entries,
            0,
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
        if self._lib.bpf_obj_get_info(self.fd, ct.byref(info), ct.byref(size)) < 0:
            raise DatapathError(f"cannot inspect pinned map {self.path}")
        want = (self.spec.map_type, ct.sizeof(self.spec.key), ct.sizeof(self.spec.leaf))
        have = (info.type, info.key_size, info.value_size)
        if want != have or info.max_entries != self.spec.max_entries:
            self.close()
            raise DatapathError(
                f"pinned map {self.path} has another layout than this version expects "
                f"(type/key/value {have}, want {want}); remove it to have it recreated"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _leaf_buffer(self):
        if self.spec.map_type == BPF_MAP_TYPE_PERCPU_ARRAY:
            return (self.spec.leaf * _possible_cpus())()
        return self.spec.leaf()

    def lookup(self, key):
        leaf = self._leaf_buffer()
        if self._lib.bpf_lookup_elem(self.fd, ct.byref(key), ct.byref(leaf)) < 0:
            return None
        return leaf

    def update(self, key, leaf) -> None:
        if self._lib.bpf_update_elem(self.fd, ct.byref(key), ct.byref(leaf), BPF_ANY) < 0:
            err = _errno(-1)
            raise DatapathError(f"cannot update BPF map {self.spec.name}: {os.strerror(err)}")

    def delete(self, key) -> bool:
        """Delete key; False if it was not there."""
        if self._lib.bpf_delete_elem(self.fd, ct.byref(key)) == 0:
            return True
        err = _errno(-1)
        if err == errno.ENOENT:
            return False
        raise DatapathError(f"cannot delete from BPF map {self.spec.name}: {os.strerror(err)}")

    def keys(self) -> Iterator:
        key = self.spec.key()
        if self._lib.bpf_get_first_key(self.fd, ct.byref(key), ct.sizeof(key)) < 0:
            return
        while True:
            yield key
            following = self.spec.key()
            if self._lib.bpf_get_next_key(self.fd, ct.byref(key), ct.byref(following)) < 0:
                return
            key = following


class DatapathMaps:
    """All maps of the datapath, with typed accessors."""

    def __init__(self, maps: dict[str, PinnedMap]):
        self._maps = maps

    @classmethod
    def open(cls, pin_dir: str | Path) -> "DatapathMaps":
        opened: dict[str, PinnedMap] = {}
        try:
            for spec in map_specs():
                opened[spec.name] = PinnedMap.open(Path(pin_dir), spec)
        except BaseException:
            for pinned in opened.values():
                pinned.close()
            raise
        return cls(opened)

    def close(self) -> None:
        for pinned in self._maps.values():
            pinned.close()

    def fds(self) -> dict[str, int]:
        return {name: pinned.fd for name, pinned in self._maps.items()}

    # endpoints: host ifindex -> EndpointEntry

    def put_endpoint(self, ifindex: int, entry: EndpointEntry) -> None:
        self._maps["endpoints"].update(ct.c_uint32(ifindex), entry.to_leaf())

    def get_endpoint(self, ifindex: int) -> EndpointEntry | None:
        leaf = self._maps["endpoints"].lookup(ct.c_uint32(ifindex))
        return None if leaf is None else EndpointEntry.from_leaf(leaf)

    def delete_endpoint(self, ifindex: int) -> bool:
        return self._maps["endpoints"].delete(ct.c_uint32(ifindex))

    def endpoints(self) -> dict[int, EndpointEntry]:
        pinned = self._maps["endpoints"]
        entries = {}
        for key in list(pinned.keys()):
            leaf = pinned.lookup(key)
            if leaf is not None:
                entries[key.value] = EndpointEntry.from_leaf(leaf)
        return entries

    # endpoint_addrs: local address -> AddressEntry

    def put_address(self, ip: IPAddress, ifindex: int, endpoint_id: int) -> None:
        leaf = EndpointAddr(ifindex=ifindex, endpoint_id=endpoint_id)
        self._maps["endpoint_addrs"].update(_address_key(ip), leaf)

    def delete_address(self, ip: IPAddress) -> bool:
        return self._maps["endpoint_addrs"].delete(_address_key(ip))

    def addresses(self) -> dict[IPAddress, AddressEntry]:
        pinned = self._maps["endpoint_addrs"]
        entries = {}
        for key in list(pinned.keys()):
            leaf = pinned.lookup(key)
            if leaf is not None:
                entries[_address_from_key(key)] = AddressEntry(leaf.ifindex, leaf.endpoint_id)
        return entries

    # counters

    def _counter_sums(self, name: str, slots: dict[str, int]) -> dict[str, int]:
        pinned = self._maps[name]
        counts = {}
        for label, slot in slots.items():
            per_cpu = pinned.lookup(ct.c_uint32(slot))
            counts[label] = sum(per_cpu) if per_cpu is not None else 0
        return counts

    def drop_counts(self) -> dict[str, int]:
        """Drop reason name -> packets, summed over CPUs."""
        return self._counter_sums("drop_counts", {r.name: -r.value for r in reasons.drop_reasons()})

    def trace_counts(self) -> dict[str, int]:
        """Trace point name -> packets, summed over CPUs."""
        return self._counter_sums("trace_counts", {t.name: t.value for t in reasons.trace_points()})
