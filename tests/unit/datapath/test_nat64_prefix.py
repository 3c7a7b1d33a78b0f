"""The NAT64 prefix as the compile gets it, and as the driver's settings accept it."""

import pytest

from datapath import DatapathError, loader
from driver.config import Config


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ("64:ff9b::/96", [0x0064FF9B, 0, 0]),
        ("2001:db8:1:2:3:4::/96", [0x20010DB8, 0x00010002, 0x00030004]),
    ],
)
def test_the_prefix_becomes_three_words_for_the_compile(prefix, words):
    assert loader.nat64_prefix_words(prefix) == words
    flags = loader.compile_cflags({}, prefix)
    assert [f for f in flags if f.startswith("-DNAT64_PREFIX_W")] == [
        f"-DNAT64_PREFIX_W{i}={w:#x}" for i, w in enumerate(words)
    ]


@pytest.mark.parametrize("prefix", ["64:ff9b::/64", "10.0.0.0/8", "64:ff9b::1/96", "nonsense"])
def test_anything_but_an_ipv6_slash_96_is_refused(prefix):
    with pytest.raises(DatapathError):
        loader.nat64_prefix_words(prefix)
    with pytest.raises(ValueError):
        Config(nat64_prefix=prefix).validate()
