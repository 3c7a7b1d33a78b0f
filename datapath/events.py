"""Drop, trace and flow events from the pinned ring buffer, decoded into :class:`Event`.

The reader opens its own file descriptor of the pinned ring buffer and shares no state
with :class:`~datapath.Datapath`, so it can run in its own thread next to the methods the
control plane calls under its lock. A ring buffer has one read position: run one reader
at a time.
"""

import ctypes as ct
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import libbpf, reasons
from .abi import (
    ENDPOINT_KEY_IPV4,
    ENDPOINT_KEY_IPV6,
    EVENT_DROP,
    EVENT_FLOW,
    EVENT_TRACE,
    EventRecord,
    IPAddress,
)
from .errors import DatapathError
from .maps.addressing import decode_address

KINDS = {EVENT_DROP: "drop", EVENT_TRACE: "trace", EVENT_FLOW: "flow"}
CODES = {
    EVENT_DROP: reasons.drop_reasons,
    EVENT_TRACE: reasons.trace_points,
    EVENT_FLOW: reasons.policy_matches,
}


@dataclass(frozen=True)
class Event:
    kind: str  # "drop", "trace" or "flow" (a new connection policy admitted)
    # drop reason (negative, lib/drop.h), trace point (lib/trace.h) or, of a flow, the
    # policy key that admitted it (enum policy_match, lib/flowlog.h)
    reason: int
    reason_name: str  # e.g. "DROP_POLICY", "TRACE_TO_LXC", "POLICY_MATCH_PEER_PORT"
    description: str  # e.g. "Policy denied"
    endpoint_id: int  # endpoint of the hook; 0 if the device had none
    ifindex: int  # device of the hook
    direction: int  # INGRESS (to the endpoint) or EGRESS (from it)
    src_identity: int  # 0 when not resolved yet (packet dropped before)
    dst_identity: int
    src: IPAddress | None  # None when the packet was dropped before its addresses were read
    dst: IPAddress | None
    protocol: int
    sport: int  # ICMP echo: the id (requests as sport, replies as dport)
    dport: int
    rev_nat_index: int  # the service the flow was translated for (lb_revnat key); 0: none


def _address(family: int, raw) -> IPAddress | None:
    """None if the packet was dropped before its family was known (family 0)."""
    if family in (ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6):
        return decode_address(family, raw)
    return None


def _code(kind: int, value: int) -> reasons.Code:
    table = CODES.get(kind, reasons.trace_points)()
    for code in table:
        if code.value == value:
            return code
    return reasons.Code(f"UNKNOWN_{value}", value, f"Unknown code {value}")


def decode_event(raw: bytes) -> Event:
    if len(raw) < ct.sizeof(EventRecord):
        raise DatapathError(f"short event record ({len(raw)} bytes)")
    rec = EventRecord.from_buffer_copy(raw[: ct.sizeof(EventRecord)])
    code = _code(rec.kind, rec.code)
    return Event(
        kind=KINDS.get(rec.kind, f"kind{rec.kind}"),
        reason=rec.code,
        reason_name=code.name,
        description=code.description,
        endpoint_id=rec.endpoint_id,
        ifindex=rec.ifindex,
        direction=rec.direction,
        src_identity=rec.src_identity,
        dst_identity=rec.dst_identity,
        src=_address(rec.family, rec.saddr),
        dst=_address(rec.family, rec.daddr),
        protocol=rec.protocol,
        sport=rec.sport,
        dport=rec.dport,
        rev_nat_index=rec.rev_nat_index,
    )


def read_events(
    ring_path: Path,
    callback: Callable[[Event], None] | Callable[[bytes], None],
    stop: threading.Event,
    timeout_ms: int = 100,
    raw: bool = False,
) -> None:
    """Call callback with every event until stop is set; polls every timeout_ms. With raw,
    the record's bytes, undecoded: for a reader that keeps most records without looking.

    An exception from callback ends the loop and is raised here.
    """
    decode = bytes if raw else decode_event
    lib = libbpf.lib()
    fd = lib.bpf_obj_get(os.fsencode(ring_path))
    if fd < 0:
        reason = os.strerror(libbpf.errno_of(fd))
        raise DatapathError(f"cannot open event ring buffer {ring_path}: {reason}")
    failure: list[BaseException] = []

    def on_record(_ctx, data, size) -> int:
        try:
            callback(decode(ct.string_at(data, size)))
        except BaseException as exc:  # ends the poll; raised below in the caller's thread
            failure.append(exc)
            return -1
        return 0

    handler = libbpf.RINGBUF_CALLBACK(on_record)  # referenced until the ring is freed
    ring = lib.ring_buffer__new(fd, handler, None, None)
    if not ring:
        os.close(fd)
        raise DatapathError(f"cannot read event ring buffer {ring_path}")
    try:
        while not stop.is_set() and not failure:
            lib.ring_buffer__poll(ring, timeout_ms)
            if failure:  # the record that failed is gone; stop before taking more
                break
            # records submitted without a wakeup (flow events, lib/events.h) wait for this
            lib.ring_buffer__consume(ring)
    finally:
        lib.ring_buffer__free(ring)
        os.close(fd)
    if failure:
        raise failure[0]
