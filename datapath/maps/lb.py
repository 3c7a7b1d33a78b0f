"""The load balancer's maps (lib/lb.h): lb_services (frontend -> service id and slot count),
lb_slots ((id, slot) -> backend), lb_revnat (id -> frontend) and lb_flows (the backend each
flow was given)."""

import ctypes as ct
import struct
from collections.abc import Collection, Iterable

from ..abi import IP6, IPAddress, LbAddrC, LbFlowC, LbKeyC, LbServiceC, LbSlotKeyC
from ..service import Frontend
from .addressing import decode_address, family_of, family_of_version
from .conntrack import CT_KEY_SIZE, packed_matches
from .pinned import MapSet, record

_LB_FLOW_SERVICE_ID = struct.Struct(
    f"<{LbFlowC.service_id.offset}xH{ct.sizeof(LbFlowC) - LbFlowC.service_id.offset - 2}x"
)


def _lb_key(frontend: Frontend) -> LbKeyC:
    return LbKeyC(
        addr=IP6(*frontend.address.packed),
        port=frontend.port,
        protocol=frontend.protocol,
        family=family_of(frontend.address),
    )


def _frontend(key: LbKeyC) -> Frontend:
    return Frontend(decode_address(key.family, key.addr), key.port, key.protocol)


class LbMaps(MapSet):
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
        pinned, family, found = self._maps["lb_slots"], family_of_version(version), []
        for slot in range(count):
            leaf = pinned.lookup(LbSlotKeyC(service_id, slot))
            if leaf is not None:
                found.append((decode_address(family, leaf.addr), leaf.port))
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
            stale.append(packed_matches(keys, endpoint_ids))
            if service_id is not None:
                services = _LB_FLOW_SERVICE_ID.iter_unpack(leaves)
                matching = [i for i, (found,) in enumerate(services) if found == service_id]
                stale.append(b"".join(record(keys, CT_KEY_SIZE, i) for i in matching))
        return flows.delete_packed(b"".join(stale))
