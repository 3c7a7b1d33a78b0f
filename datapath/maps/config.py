"""config: the one-slot array of datapath-wide settings (struct datapath_config)."""

import ctypes as ct

from ..abi import ConfigC
from .pinned import MapSet


class ConfigMaps(MapSet):
    def set_config_flag(self, flag: int, enabled: bool) -> None:
        pinned, slot = self._maps["config"], ct.c_uint32(0)
        config = pinned.lookup(slot) or ConfigC()
        config.flags = config.flags | flag if enabled else config.flags & ~flag
        pinned.update(slot, config)
