"""The `cilium` command spells the datapath's protocol and direction numbers itself (it may
not import the driver); every number the datapath defines has the same name on screen."""

from datapath import abi
from driver.cli import main


def test_protocol_names_match_the_datapath():
    shown = {number: name.lower() for number, name in main.PROTOCOL_NAMES.items()}
    assert shown == abi.PROTOCOL_NAMES


def test_direction_names_match_the_datapath():
    assert main.DIRECTIONS == abi.DIRECTIONS
