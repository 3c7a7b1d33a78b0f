"""Map pressure in the real datapath: configured capacities, a pinned map of another size,
and a conntrack table far smaller than the flows through it."""

import os
import shutil

import pytest

from datapath import DatapathError, MapSizes
from datapath.maps import DatapathMaps


@pytest.fixture
def scratch_pin_dir():
    path = f"/sys/fs/bpf/pycilium-sizes-{os.getpid()}"
    os.makedirs(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_maps_are_created_with_the_configured_sizes(scratch_pin_dir):
    maps = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=100, conntrack=64, services=32))
    try:
        fill = maps.fill()
        assert fill["policy"] == (0, 100)
        assert fill["conntrack"] == (0, 64)
        assert fill["lb_services"] == (0, 32)
        assert fill["lb_revnat"] == (0, 32)
    finally:
        maps.close()


@pytest.mark.parametrize(
    ("sizes", "name"),
    [
        (MapSizes(policy=128, conntrack=64), "policy"),
        (MapSizes(policy=64, conntrack=128), "conntrack"),
    ],
    ids=["policy", "conntrack"],
)
def test_a_pinned_map_of_another_size_is_refused_and_kept(scratch_pin_dir, sizes, name):
    """Running containers' programs use the pinned maps: a start with other sizes must not
    replace them (an empty policy or conntrack map would cut their traffic)."""
    first = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=64, conntrack=64))
    first.close()
    with pytest.raises(DatapathError, match=f"{name} holds 64 entries, the configuration says 128"):
        DatapathMaps.open(scratch_pin_dir, sizes)
    again = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=64, conntrack=64))
    try:
        assert again.fill()[name] == (0, 64)
    finally:
        again.close()
