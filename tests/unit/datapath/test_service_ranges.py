"""The service ranges as the compile gets them (lib/lb.h's address and mask words), and as
the driver's settings accept them."""

import pytest

from datapath import DatapathError, loader
from datapath.abi import DEFAULT_SERVICE_RANGES
from driver.config import Config


def _words(flags: list[str]) -> dict[str, int]:
    return {
        name[2:]: int(value, 16)
        for name, value in (f.split("=") for f in flags if f.startswith("-DSERVICE"))
    }


@pytest.mark.parametrize(
    ("ranges", "words"),
    [
        (
            DEFAULT_SERVICE_RANGES,  # fd00:5::/64, 10.96.0.0/16
            {
                "SERVICE6_W0": 0xFD000005,
                "SERVICE6_W1": 0,
                "SERVICE6_W2": 0,
                "SERVICE6_W3": 0,
                "SERVICE6_M0": 0xFFFFFFFF,
                "SERVICE6_M1": 0xFFFFFFFF,
                "SERVICE6_M2": 0,
                "SERVICE6_M3": 0,
                "SERVICE4_W": 0x0A600000,
                "SERVICE4_M": 0xFFFF0000,
            },
        ),
        (
            ("2001:db8:aa:bb00::/56", "192.0.2.128/25"),  # a mask that splits a word
            {
                "SERVICE6_W0": 0x20010DB8,
                "SERVICE6_W1": 0x00AABB00,
                "SERVICE6_W2": 0,
                "SERVICE6_W3": 0,
                "SERVICE6_M0": 0xFFFFFFFF,
                "SERVICE6_M1": 0xFFFFFF00,
                "SERVICE6_M2": 0,
                "SERVICE6_M3": 0,
                "SERVICE4_W": 0xC0000280,
                "SERVICE4_M": 0xFFFFFF80,
            },
        ),
        (
            ("fdce:1c97::5:0/112", "10.197.0.0/24"),  # the last word masked
            {
                "SERVICE6_W0": 0xFDCE1C97,
                "SERVICE6_W1": 0,
                "SERVICE6_W2": 0,
                "SERVICE6_W3": 0x00050000,
                "SERVICE6_M0": 0xFFFFFFFF,
                "SERVICE6_M1": 0xFFFFFFFF,
                "SERVICE6_M2": 0xFFFFFFFF,
                "SERVICE6_M3": 0xFFFF0000,
                "SERVICE4_W": 0x0AC50000,
                "SERVICE4_M": 0xFFFFFF00,
            },
        ),
    ],
)
def test_the_ranges_become_address_and_mask_words(ranges, words):
    assert _words(loader.compile_cflags({}, service_ranges=ranges)) == words


@pytest.mark.parametrize(
    "ranges",
    [
        ("10.96.0.0/16", "fd00:5::/64"),  # swapped
        ("fd00:5::1/64", "10.96.0.0/16"),  # host bits set
        ("fd00:5::/64", "nonsense"),
    ],
)
def test_anything_but_an_ipv6_and_an_ipv4_network_is_refused(ranges):
    with pytest.raises(DatapathError):
        loader.service_range_flags(ranges)
    with pytest.raises(ValueError):
        Config(service_range6=ranges[0], service_range4=ranges[1]).validate()
