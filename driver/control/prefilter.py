"""The XDP prefilter: a deny list of source prefixes dropped on the host devices the
operator names, kept in the state database and made so in the datapath.

The list and the devices named at run time survive a restart; devices named with
--prefilter-device join them at every start. A device that is missing or refuses the
program does not stop the driver: the list shows it as not attached, with why.
"""

import ipaddress
import json
import logging

from datapath import DatapathError
from datapath.interface import DatapathApi

from ..errors import BadRequest, NotFound
from .state import Store

log = logging.getLogger(__name__)

CIDRS_KEY = "prefilter:cidrs"
DEVICES_KEY = "prefilter:devices"
IFNAMSIZ = 16  # the kernel's limit of a device name, its NUL included


def parse_cidrs(cidrs: list[str]) -> list[str]:
    """The prefixes in their canonical spelling; BadRequest naming every bad one."""
    parsed, bad = [], []
    for cidr in cidrs:
        try:
            parsed.append(str(ipaddress.ip_network(str(cidr).strip())))
        except ValueError as exc:
            bad.append(f"{cidr!r} ({exc})")
    if bad:
        raise BadRequest(f"invalid CIDR {', '.join(bad)}; nothing was changed")
    return parsed


def check_devices(devices: list[str]) -> list[str]:
    bad = [d for d in devices if not valid_device_name(d)]
    if bad:
        raise BadRequest(f"invalid device name {', '.join(map(repr, bad))}; nothing was changed")
    return list(devices)


def valid_device_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) < IFNAMSIZ
        and name not in (".", "..")
        and not any(c == "/" or c.isspace() for c in name)
    )


class Prefilter:
    def __init__(self, store: Store, datapath: DatapathApi, start_devices: tuple[str, ...]):
        self.store = store
        self.datapath = datapath
        self.start_devices = start_devices
        self.problems: dict[str, str] = {}  # device -> why it has no prefilter

    def restore(self) -> None:
        """At start: the saved list in the tries, the prefilter on the saved devices and
        those of --prefilter-device, and off any other device that has this instance's."""
        devices = sorted(set(self._devices()) | set(self.start_devices))
        self.datapath.set_prefilter(self._cidrs())
        for device in set(self.datapath.prefilter_devices()) - set(devices):
            self.datapath.detach_prefilter(device)
        for device in devices:
            self._attach(device)
        self._save(self._cidrs(), devices)

    def update(self, cidrs: list[str], devices: list[str]) -> dict:
        """Add prefixes and devices; all or nothing."""
        added = parse_cidrs(cidrs)
        devices = check_devices(devices)
        stored = self._cidrs()
        wanted = sorted(set(stored) | set(added))
        attached = []
        try:
            for device in devices:
                if device not in self.datapath.prefilter_devices():
                    attached.append(device)
                self.datapath.attach_prefilter(device)
            self.datapath.set_prefilter(wanted)
        except DatapathError:
            for device in attached:
                self.datapath.detach_prefilter(device)
            raise
        for device in devices:
            self.problems.pop(device, None)
        self._save(wanted, sorted(set(self._devices()) | set(devices)))
        return self.record()

    def delete(self, cidrs: list[str], devices: list[str]) -> dict:
        """Remove prefixes from the list and take the prefilter off devices; NotFound,
        changing nothing, if one of them is not there."""
        gone = set(parse_cidrs(cidrs))
        leaving = set(check_devices(devices))
        stored, named = self._cidrs(), self._devices()
        missing = sorted(gone - set(stored)) + sorted(leaving - set(named))
        if missing:
            raise NotFound(f"not in the prefilter: {', '.join(missing)}; nothing was changed")
        wanted = [cidr for cidr in stored if cidr not in gone]
        self.datapath.set_prefilter(wanted)
        for device in sorted(leaving):
            self.datapath.detach_prefilter(device)
            self.problems.pop(device, None)
        self._save(wanted, [d for d in named if d not in leaving])
        return self.record()

    def record(self) -> dict:
        """{"prefixes": [{"cidr", "drops"}], "devices": [{"device", "mode", "error"}]};
        mode is native, generic, or None when the device does not have it."""
        drops = self.datapath.prefilter_drops()
        modes = self.datapath.prefilter_devices()
        return {
            "prefixes": [{"cidr": c, "drops": drops.get(c, 0)} for c in self._cidrs()],
            "devices": [
                {"device": d, "mode": modes.get(d), "error": self.problems.get(d)}
                for d in self._devices()
            ],
        }

    def _attach(self, device: str) -> None:
        try:
            mode = self.datapath.attach_prefilter(device)
        except DatapathError as exc:
            log.warning("prefilter not attached to %s: %s", device, exc)
            self.problems[device] = str(exc)
            return
        self.problems.pop(device, None)
        log.info("prefilter attached to %s (%s XDP)", device, mode)

    def _cidrs(self) -> list[str]:
        return json.loads(self.store.get_meta(CIDRS_KEY) or "[]")

    def _devices(self) -> list[str]:
        return json.loads(self.store.get_meta(DEVICES_KEY) or "[]")

    def _save(self, cidrs: list[str], devices: list[str]) -> None:
        with self.store.transaction():
            self.store.set_meta(CIDRS_KEY, json.dumps(sorted(cidrs, key=_order)))
            self.store.set_meta(DEVICES_KEY, json.dumps(sorted(devices)))


def _order(cidr: str) -> tuple:
    net = ipaddress.ip_network(cidr)
    return net.version, net.network_address, net.prefixlen
