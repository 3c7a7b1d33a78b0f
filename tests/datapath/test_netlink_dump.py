"""Netlink dumps interrupted by concurrent link or route changes are asked again."""

import pytest
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from datapath import DatapathError
from datapath.netlink import DUMP_ATTEMPTS, _dump


def interrupted_then(times: int, result: list):
    calls = []

    def request(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) <= times:
            raise NetlinkDumpInterrupted()
        return iter(result)

    return request, calls


def test_an_interrupted_dump_is_repeated():
    request, calls = interrupted_then(2, ["route"])
    assert _dump(request, family=10) == ["route"]
    assert len(calls) == 3 and calls[-1] == ((), {"family": 10})


def test_a_burst_of_interruptions_is_waited_out():
    request, calls = interrupted_then(20, ["link"])
    assert _dump(request) == ["link"]
    assert len(calls) == 21


def test_a_dump_interrupted_every_time_is_a_clear_error():
    request, calls = interrupted_then(DUMP_ATTEMPTS, [])
    with pytest.raises(DatapathError, match="kept being interrupted"):
        _dump(request)
    assert len(calls) == DUMP_ATTEMPTS
