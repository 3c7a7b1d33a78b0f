"""The pinned BPF maps, and the only code that touches them.

Maps are created and pinned here (not by the C compile), so their file descriptors exist
before the program is compiled: lib/maps.h references them as ``-D<NAME>_MAP_FD``. A new
driver process opens the same pinned maps, so entries survive restarts.

Callers get typed values (:class:`EndpointEntry`, :class:`AddressEntry`, :class:`PolicyKey`,
:class:`CtEntry`); the ctypes ``Key``/``Leaf`` classes mirror the structs of
``bpf/lib/common.h``.
"""

import ctypes as ct
import errno
import ipaddress
import itertools
import os
import struct
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import libbpf, reasons
from .errors import DatapathError
from .policy import EGRESS, INGRESS, INIT_ID, PolicyKey
from .service import Frontend

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
COUNTABLE_MAP_TYPES = (BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LPM_TRIE)
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_F_NO_PREALLOC = 1

# Capacities. Changing one makes start() refuse the old pinned map (see _check_layout).
CIDR_MAP_SIZE = 16384  # prefixes per family
BATCH_ENTRIES = 4096  # entries per batched map read
BATCH_TOKEN_SIZE = 64  # the kernel's resume token: a bucket index for hash maps
EVENTS_RING_BYTES = 1 << 20  # ring buffer of drop and trace events; a power of 2 pages
LB_SLOT_MAP_SIZE = 65536  # backend slots of all services together
LB_FLOW_MAP_SIZE = 65536  # flows' backend picks (LRU: the oldest go first when full)
RETIRED_MAP_SIZE = 4096  # deleted endpoints whose flows are yet to be swept (read by no program)

# lib/common.h
EP_F_INGRESS_ENFORCED = 1
EP_F_EGRESS_ENFORCED = 2
CONFIG_TRACE_EVENTS = 1
CT_F_TX_CLOSING = 1
CT_F_RX_CLOSING = 2
CT_F_SEEN_REPLY = 4
CT_F_LOOPBACK = 8

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
        ("identity", ct.c_uint32),
    )


class EndpointKey(ct.Structure):
    """Key of the endpoint_addrs map (struct endpoint_key)."""

    _fields_ = (("ip", IP6), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3))


class RetiredC(ct.Structure):
    """Leaf of retired (the control plane's own map): a deleted endpoint's addresses."""

    _fields_ = (("ipv6", IP6), ("ipv4", IP6), ("has_ipv4", ct.c_uint8), ("pad", ct.c_uint8 * 3))


class EndpointAddr(ct.Structure):
    """Leaf of the endpoint_addrs map (struct endpoint_addr)."""

    _fields_ = (("ifindex", ct.c_uint32), ("endpoint_id", ct.c_uint16), ("pad", ct.c_uint16))


class PolicyKeyC(ct.Structure):
    """Key of the policy map (struct policy_key)."""

    _fields_ = (
        ("endpoint_id", ct.c_uint16),
        ("direction", ct.c_uint8),
        ("protocol", ct.c_uint8),
        ("dport", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("identity", ct.c_uint32),
    )


class PolicyEntryC(ct.Structure):
    """Leaf of the policy map (struct policy_entry)."""

    _fields_ = (("packets", ct.c_uint64), ("bytes", ct.c_uint64))


class Cidr4Key(ct.Structure):
    _fields_ = (("prefixlen", ct.c_uint32), ("addr", IP4))


class Cidr6Key(ct.Structure):
    _fields_ = (("prefixlen", ct.c_uint32), ("addr", IP6))


class CtKeyC(ct.Structure):
    """Key of the conntrack map (struct ct_key)."""

    _fields_ = (
        ("saddr", IP6),
        ("daddr", IP6),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("endpoint_id", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("family", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    )


class CtEntryC(ct.Structure):
    """Leaf of the conntrack map (struct ct_entry)."""

    _fields_ = (
        ("lifetime", ct.c_uint32),
        ("rev_nat_index", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("packets", ct.c_uint64),
        ("bytes", ct.c_uint64),
    )


class LbKeyC(ct.Structure):
    """Key of lb_services (struct lb_key)."""

    _fields_ = (
        ("addr", IP6),
        ("port", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("family", ct.c_uint8),
    )


class LbServiceC(ct.Structure):
    """Leaf of lb_services (struct lb_service)."""

    _fields_ = (
        ("id", ct.c_uint16),
        ("count", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("pad", ct.c_uint16),
    )


class LbSlotKeyC(ct.Structure):
    """Key of lb_slots (struct lb_slot_key)."""

    _fields_ = (("service_id", ct.c_uint16), ("slot", ct.c_uint16))


class LbAddrC(ct.Structure):
    """Leaf of lb_slots and lb_revnat (struct lb_addr)."""

    _fields_ = (("addr", IP6), ("port", ct.c_uint16), ("pad", ct.c_uint16))


class LbFlowC(ct.Structure):
    """Leaf of lb_flows (struct lb_flow), keyed by the client's CtKeyC to the frontend."""

    _fields_ = (
        ("backend", IP6),
        ("backend_port", ct.c_uint16),
        ("service_id", ct.c_uint16),
        ("lifetime", ct.c_uint32),
    )


class ConfigC(ct.Structure):
    """Leaf of the one-slot config array (struct datapath_config)."""

    _fields_ = (("flags", ct.c_uint32),)


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
    flags: int = 0  # EP_F_*
    identity: int = INIT_ID

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
            identity=self.identity,
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
            identity=leaf.identity,
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
    return _address(key.family, key.ip)


CT_KEY_SIZE = ct.sizeof(CtKeyC)
# The one field a packed walk decodes of every record: a 16-bit id, and nothing else.
_CT_KEY_ENDPOINT_ID = struct.Struct(
    f"<{CtKeyC.endpoint_id.offset}xH{CT_KEY_SIZE - CtKeyC.endpoint_id.offset - 2}x"
)
_LB_FLOW_SERVICE_ID = struct.Struct(
    f"<{LbFlowC.service_id.offset}xH{ct.sizeof(LbFlowC) - LbFlowC.service_id.offset - 2}x"
)


def _record(packed: bytes, size: int, index: int) -> bytes:
    return packed[index * size : (index + 1) * size]


def _packed_matches(keys: bytes, endpoint_ids: Collection[int], ends: Iterable = ()) -> bytes:
    """The conntrack keys (struct ct_key, packed) of the hooks of endpoint_ids or with a
    source or destination in ends ((family, 16 raw address bytes) pairs), packed the same way."""
    size = CT_KEY_SIZE
    found = set()
    if endpoint_ids:
        ids = _CT_KEY_ENDPOINT_ID.iter_unpack(keys)
        found.update(i for i, (owner,) in enumerate(ids) if owner in endpoint_ids)
    family_at = CtKeyC.family.offset
    for family, raw in ends:
        at = keys.find(raw)
        while at >= 0:
            index, offset = divmod(at, size)
            field = offset in (CtKeyC.saddr.offset, CtKeyC.daddr.offset)
            if field and keys[index * size + family_at] == family:
                found.add(index)
            at = keys.find(raw, at + 1)
    return b"".join(_record(keys, size, i) for i in sorted(found))


def _address(family: int, raw) -> IPAddress:
    if family == ENDPOINT_KEY_IPV6:
        return ipaddress.IPv6Address(bytes(raw))
    return ipaddress.IPv4Address(bytes(raw)[:4])


@dataclass(frozen=True)
class CtEntry:
    """A decoded conntrack entry: a flow as the hook of (endpoint_id, direction) first saw it."""

    family: int  # 4 or 6
    src: IPAddress
    dst: IPAddress
    sport: int  # ICMP echo: the id (requests as sport)
    dport: int
    protocol: int
    direction: int  # INGRESS or EGRESS of endpoint_id
    endpoint_id: int
    lifetime_remaining: int  # seconds; <= 0: expired (the datapath ignores it)
    flags: int  # CT_F_*
    packets: int
    bytes: int
    rev_nat_index: int

    @property
    def tx_closing(self) -> bool:
        return bool(self.flags & CT_F_TX_CLOSING)

    @property
    def established(self) -> bool:
        return bool(self.flags & CT_F_SEEN_REPLY)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & CT_F_LOOPBACK)

    @classmethod
    def decode(cls, key: CtKeyC, leaf: CtEntryC, now: int) -> "CtEntry":
        return cls(
            family=6 if key.family == ENDPOINT_KEY_IPV6 else 4,
            src=_address(key.family, key.saddr),
            dst=_address(key.family, key.daddr),
            sport=key.sport,
            dport=key.dport,
            protocol=key.protocol,
            direction=key.direction,
            endpoint_id=key.endpoint_id,
            lifetime_remaining=leaf.lifetime - now,
            flags=leaf.flags,
            packets=leaf.packets,
            bytes=leaf.bytes,
            rev_nat_index=leaf.rev_nat_index,
        )


def monotonic_seconds() -> int:
    """The clock of ct_entry.lifetime: bpf_ktime_get_ns() is CLOCK_MONOTONIC."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


def _policy_key_c(endpoint_id: int, key: PolicyKey) -> PolicyKeyC:
    return PolicyKeyC(
        endpoint_id=endpoint_id,
        direction=key.direction,
        protocol=key.protocol,
        dport=key.dport,
        identity=key.identity,
    )


def _policy_key(raw: PolicyKeyC) -> PolicyKey:
    return PolicyKey(raw.identity, raw.dport, raw.protocol, raw.direction)


def _family(ip: IPAddress) -> int:
    return _family_of_version(ip.version)


def _family_of_version(version: int) -> int:
    return ENDPOINT_KEY_IPV6 if version == 6 else ENDPOINT_KEY_IPV4


def _lb_key(frontend: Frontend) -> LbKeyC:
    return LbKeyC(
        addr=IP6(*frontend.address.packed),
        port=frontend.port,
        protocol=frontend.protocol,
        family=_family(frontend.address),
    )


def _frontend(key: LbKeyC) -> Frontend:
    return Frontend(_address(key.family, key.addr), key.port, key.protocol)


def _cidr_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network):
    if net.version == 6:
        return Cidr6Key(prefixlen=net.prefixlen, addr=IP6(*net.network_address.packed))
    return Cidr4Key(prefixlen=net.prefixlen, addr=IP4(*net.network_address.packed))


def _cidr_of(key) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network((bytes(key.addr), key.prefixlen))


@dataclass(frozen=True)
class MapSizes:
    """The capacities a driver instance configures (--policy-map-size and friends)."""

    policy: int = 262144  # policy entries of all endpoints together
    conntrack: int = 262144  # tracked flows (LRU: the oldest go first when full)
    services: int = 8192  # frontends (each has its own service id and reverse NAT entry)


DEFAULT_MAP_SIZES = MapSizes()


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


def map_specs(sizes: MapSizes = DEFAULT_MAP_SIZES) -> tuple[MapSpec, ...]:
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
        MapSpec(
            "policy",
            BPF_MAP_TYPE_HASH,
            PolicyKeyC,
            PolicyEntryC,
            sizes.policy,
            BPF_F_NO_PREALLOC,
        ),
        MapSpec("conntrack", BPF_MAP_TYPE_LRU_HASH, CtKeyC, CtEntryC, sizes.conntrack),
        MapSpec(
            "cidr4", BPF_MAP_TYPE_LPM_TRIE, Cidr4Key, ct.c_uint32, CIDR_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        MapSpec(
            "cidr6", BPF_MAP_TYPE_LPM_TRIE, Cidr6Key, ct.c_uint32, CIDR_MAP_SIZE, BPF_F_NO_PREALLOC
        ),
        MapSpec("config", BPF_MAP_TYPE_ARRAY, ct.c_uint32, ConfigC, 1),
        MapSpec("lb_services", BPF_MAP_TYPE_HASH, LbKeyC, LbServiceC, sizes.services),
        MapSpec("lb_slots", BPF_MAP_TYPE_HASH, LbSlotKeyC, LbAddrC, LB_SLOT_MAP_SIZE),
        MapSpec("lb_revnat", BPF_MAP_TYPE_HASH, ct.c_uint16, LbAddrC, sizes.services),
        MapSpec("lb_flows", BPF_MAP_TYPE_LRU_HASH, CtKeyC, LbFlowC, LB_FLOW_MAP_SIZE),
        MapSpec("events", BPF_MAP_TYPE_RINGBUF, None, None, EVENTS_RING_BYTES),
        MapSpec("retired", BPF_MAP_TYPE_HASH, ct.c_uint32, RetiredC, RETIRED_MAP_SIZE),
    )


def _errno(ret: int) -> int:
    return libbpf.errno_of(ret)


def _possible_cpus() -> int:
    return libbpf.lib().libbpf_num_possible_cpus()


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
        if self._lib.bpf_map_lookup_elem(self.fd, ct.byref(key), ct.byref(leaf)) < 0:
            return None
        return leaf

    def update(self, key, leaf) -> None:
        if self._lib.bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(leaf), BPF_ANY) < 0:
            err = _errno(-1)
            raise DatapathError(f"cannot update BPF map {self.spec.name}: {os.strerror(err)}")

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
        """Every (key, leaf) of a hash map; see _batches()."""
        for keys, leaves, count in self._batches(reuse=False):
            yield from zip(keys[:count], leaves[:count], strict=True)

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
                leaves = (self.spec.leaf * BATCH_ENTRIES)()
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


class DatapathMaps:
    """All maps of the datapath, with typed accessors."""

    def __init__(self, maps: dict[str, PinnedMap]):
        self._maps = maps
        # endpoint id -> its policy keys; read from the map on first use, then kept in
        # step by this object (the one writer of the policy map).
        self._policy_index: dict[int, set[PolicyKey]] | None = None

    @classmethod
    def open(cls, pin_dir: str | Path, sizes: MapSizes = DEFAULT_MAP_SIZES) -> "DatapathMaps":
        opened: dict[str, PinnedMap] = {}
        try:
            for spec in map_specs(sizes):
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

    def fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) of the maps whose keys come and go."""
        found = {}
        for name, pinned in self._maps.items():
            spec = pinned.spec
            if spec.map_type not in COUNTABLE_MAP_TYPES:
                continue
            if name == "policy":
                entries = self.policy_count()
            else:
                # A key deleted mid-walk restarts the walk: never count past the capacity.
                entries = sum(1 for _ in itertools.islice(pinned.keys(), spec.max_entries))
            found[name] = (entries, spec.max_entries)
        return found

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

    # policy: (endpoint id, PolicyKey) -> (packets, bytes)

    def _policy(self) -> dict[int, set[PolicyKey]]:
        if self._policy_index is None:
            index: dict[int, set[PolicyKey]] = {}
            for raw in list(self._maps["policy"].keys()):
                index.setdefault(raw.endpoint_id, set()).add(_policy_key(raw))
            self._policy_index = index
        return self._policy_index

    def policy_keys(self, endpoint_id: int) -> set[PolicyKey]:
        return set(self._policy().get(endpoint_id, ()))

    def policy_capacity(self) -> int:
        return self._maps["policy"].spec.max_entries

    def policy_count(self) -> int:
        return sum(len(keys) for keys in self._policy().values())

    def policy_endpoint_ids(self) -> set[int]:
        return {ep for ep, keys in self._policy().items() if keys}

    def add_policy(self, endpoint_id: int, keys: Iterable[PolicyKey]) -> None:
        """Add keys with zero counters; keys already there keep theirs."""
        pinned, index = self._maps["policy"], self._policy().setdefault(endpoint_id, set())
        for key in keys:
            pinned.insert(_policy_key_c(endpoint_id, key), PolicyEntryC())
            index.add(key)

    def delete_policy(self, endpoint_id: int, keys: Iterable[PolicyKey]) -> None:
        pinned, index = self._maps["policy"], self._policy().setdefault(endpoint_id, set())
        for key in list(keys):
            pinned.delete(_policy_key_c(endpoint_id, key))
            index.discard(key)
        if not index:
            del self._policy()[endpoint_id]

    def policy_counters(self, endpoint_id: int) -> dict[PolicyKey, tuple[int, int]]:
        pinned, counters = self._maps["policy"], {}
        for key in self.policy_keys(endpoint_id):
            leaf = pinned.lookup(_policy_key_c(endpoint_id, key))
            if leaf is not None:
                counters[key] = (leaf.packets, leaf.bytes)
        return counters

    # cidr4 / cidr6: prefix -> identity

    def cidr_identities(self) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int]:
        found = {}
        for name in ("cidr4", "cidr6"):
            pinned = self._maps[name]
            for key in list(pinned.keys()):
                leaf = pinned.lookup(key)
                if leaf is not None:
                    found[_cidr_of(key)] = leaf.value
        return found

    def put_cidr(self, net, identity: int) -> None:
        self._maps[f"cidr{net.version}"].update(_cidr_key(net), ct.c_uint32(identity))

    def delete_cidr(self, net) -> bool:
        return self._maps[f"cidr{net.version}"].delete(_cidr_key(net))

    # conntrack

    def _ct_items(self) -> Iterator[tuple[CtKeyC, CtEntryC]]:
        return self._maps["conntrack"].items()

    def ct_totals(self) -> dict[int, tuple[int, int, int]]:
        """Direction -> (flows, packets, bytes) summed over the conntrack entries, undecoded."""
        totals = {INGRESS: [0, 0, 0], EGRESS: [0, 0, 0]}
        for key, leaf in self._ct_items():
            sums = totals.setdefault(key.direction, [0, 0, 0])
            sums[0] += 1
            sums[1] += leaf.packets
            sums[2] += leaf.bytes
        return {direction: tuple(sums) for direction, sums in totals.items()}

    def ct_entries(self) -> list[CtEntry]:
        now = monotonic_seconds()
        return [CtEntry.decode(key, leaf, now) for key, leaf in self._ct_items()]

    def delete_ct(self, endpoint_ids: Collection[int], addresses: Iterable[IPAddress]) -> int:
        """Delete entries of the hooks of endpoint_ids and entries naming any of addresses."""
        # Matched as bytes in whole batches: decoding every entry of a full table from Python
        # costs seconds, and so does one system call per deleted entry.
        ends = [(key.family, bytes(key.ip)) for key in map(_address_key, addresses)]
        conntrack = self._maps["conntrack"]
        stale = [_packed_matches(keys, endpoint_ids, ends) for keys, _ in conntrack.packed_items()]
        return conntrack.delete_packed(b"".join(stale))

    # services: frontend -> (service id, slot count); (id, slot) -> backend; id -> frontend

    def _items(self, name: str) -> list:
        return list(self._maps[name].items())

    def services(self) -> dict[Frontend, tuple[int, int]]:
        """Frontend -> (service id, backend slot count)."""
        return {_frontend(key): (leaf.id, leaf.count) for key, leaf in self._items("lb_services")}

    def get_service(self, frontend: Frontend) -> tuple[int, int] | None:
        leaf = self._maps["lb_services"].lookup(_lb_key(frontend))
        return None if leaf is None else (leaf.id, leaf.count)

    def put_service(self, frontend: Frontend, service_id: int, count: int) -> None:
        leaf = LbServiceC(id=service_id, count=count)
        self._maps["lb_services"].update(_lb_key(frontend), leaf)

    def delete_service(self, frontend: Frontend) -> bool:
        return self._maps["lb_services"].delete(_lb_key(frontend))

    def service_capacity(self) -> int:
        return self._maps["lb_services"].spec.max_entries

    def slot_capacity(self) -> int:
        return self._maps["lb_slots"].spec.max_entries

    def slots(self, service_id: int, count: int, version: int) -> list[tuple[IPAddress, int]]:
        """Slots 0..count-1 of an IPv<version> service as (address, port); missing ones skipped."""
        pinned, family, found = self._maps["lb_slots"], _family_of_version(version), []
        for slot in range(count):
            leaf = pinned.lookup(LbSlotKeyC(service_id, slot))
            if leaf is not None:
                found.append((_address(family, leaf.addr), leaf.port))
        return found

    def put_slot(self, service_id: int, slot: int, address: IPAddress, port: int) -> None:
        leaf = LbAddrC(addr=IP6(*address.packed), port=port)
        self._maps["lb_slots"].update(LbSlotKeyC(service_id, slot), leaf)

    def delete_slots(self, service_id: int, slots: Iterable[int] | None = None) -> int:
        """Delete the given slots of service_id; None: every slot it has in the map."""
        pinned = self._maps["lb_slots"]
        if slots is None:
            keys = [LbSlotKeyC(k.service_id, k.slot) for k in list(pinned.keys())]
            keys = [k for k in keys if k.service_id == service_id]
        else:
            keys = [LbSlotKeyC(service_id, slot) for slot in slots]
        return sum(pinned.delete(key) for key in keys)

    def slot_service_ids(self) -> set[int]:
        return {key.service_id for key in list(self._maps["lb_slots"].keys())}

    def revnat(self) -> dict[int, tuple[bytes, int]]:
        """Service id -> (raw address, port) of its frontend."""
        return {key.value: (bytes(leaf.addr), leaf.port) for key, leaf in self._items("lb_revnat")}

    def put_revnat(self, service_id: int, frontend: Frontend) -> None:
        leaf = LbAddrC(addr=IP6(*frontend.address.packed), port=frontend.port)
        self._maps["lb_revnat"].update(ct.c_uint16(service_id), leaf)

    def delete_revnat(self, service_id: int) -> bool:
        return self._maps["lb_revnat"].delete(ct.c_uint16(service_id))

    def delete_lb_flows(
        self, endpoint_ids: Collection[int] = (), service_id: int | None = None
    ) -> int:
        """Forget the backend picks of client endpoints' flows, or of a service's."""
        flows, stale = self._maps["lb_flows"], []
        for keys, leaves in flows.packed_items():
            stale.append(_packed_matches(keys, endpoint_ids))
            if service_id is not None:
                services = _LB_FLOW_SERVICE_ID.iter_unpack(leaves)
                matching = [i for i, (found,) in enumerate(services) if found == service_id]
                stale.append(b"".join(_record(keys, CT_KEY_SIZE, i) for i in matching))
        return flows.delete_packed(b"".join(stale))

    # retired: endpoint id -> addresses of a deleted endpoint whose flows are yet to be swept

    def retired(self) -> dict[int, tuple[IPAddress, ...]]:
        found = {}
        for key, leaf in self._maps["retired"].items():
            addresses = [_address(ENDPOINT_KEY_IPV6, leaf.ipv6)]
            if leaf.has_ipv4:
                addresses.append(_address(ENDPOINT_KEY_IPV4, leaf.ipv4))
            found[key] = tuple(addresses)  # a c_uint32 array yields plain ints
        return found

    def put_retired(self, endpoint_id: int, addresses: Iterable[IPAddress]) -> None:
        leaf = RetiredC()
        for ip in addresses:
            if ip.version == 6:
                leaf.ipv6 = IP6(*ip.packed)
            else:
                leaf.ipv4, leaf.has_ipv4 = IP6(*ip.packed), 1
        self._maps["retired"].update(ct.c_uint32(endpoint_id), leaf)

    def delete_retired(self, endpoint_id: int) -> None:
        self._maps["retired"].delete(ct.c_uint32(endpoint_id))

    # config

    def set_config_flag(self, flag: int, enabled: bool) -> None:
        pinned, slot = self._maps["config"], ct.c_uint32(0)
        config = pinned.lookup(slot) or ConfigC()
        config.flags = config.flags | flag if enabled else config.flags & ~flag
        pinned.update(slot, config)
